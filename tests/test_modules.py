# Copyright (c) CaGNet-D2 contributors.
"""Contextual module, generator, discriminator/classifier and losses, without any config."""
import pytest
import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from cagnet.modeling import ContextualModule, DiscriminatorClassifier, FeatureGenerator
from cagnet.modeling.backbone import ASPPL, make_dilated_resnet
from cagnet.modeling.losses import (
    adversarial_loss,
    classification_loss,
    classwise_mmd_loss,
    kl_divergence,
    median_distance,
    mmd_loss,
    reconstruction_loss,
)


def test_contextual_module_shapes_and_residual_attention():
    torch.manual_seed(0)
    cm = ContextualModule(in_channels=12, context_channels=8, dilations=(1, 2, 5))
    f = torch.randn(2, 12, 9, 11)
    out = cm.eval()(f)
    assert out.x.shape == out.z.shape == out.mu.shape == out.logvar.shape == (2, 12, 9, 11)
    assert out.scale_weights.shape == (2, 3, 9, 11)
    assert ((out.scale_weights > 0) & (out.scale_weights < 1)).all()
    # Test time: Z is the mean, X = F + F * sigmoid(Z).
    torch.testing.assert_close(out.z, out.mu)
    torch.testing.assert_close(out.x, f + f * torch.sigmoid(out.mu))
    # Ablation without the residual link.
    cm.residual = False
    torch.testing.assert_close(cm(f).x, f * torch.sigmoid(cm(f).mu))


def test_contextual_module_samples_in_training_only():
    torch.manual_seed(0)
    cm = ContextualModule(in_channels=6, dilations=(1, 2, 5))
    f = torch.randn(1, 6, 7, 7)
    a, b = cm.train()(f), cm.train()(f)
    assert not torch.allclose(a.z, b.z)  # a fresh sample each time
    torch.testing.assert_close(a.mu, b.mu)
    c, d = cm.eval()(f), cm.eval()(f)
    torch.testing.assert_close(c.z, d.z)


def test_contextual_module_serial_vs_parallel_inputs():
    cm = ContextualModule(in_channels=6, context_channels=4, serial=True)
    assert [c.in_channels for c in cm.context_convs] == [6, 4, 4]
    assert [c.dilation for c in cm.context_convs] == [(1, 1), (2, 2), (5, 5)]
    parallel = ContextualModule(in_channels=6, context_channels=4, serial=False)
    assert [c.in_channels for c in parallel.context_convs] == [6, 6, 6]


def test_kl_matches_closed_form():
    torch.manual_seed(0)
    mu, logvar = torch.randn(50, 7), torch.randn(50, 7)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(kl_divergence(mu, logvar), expected)
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_context_selector_conv_receives_gradients():
    """The reference code never trained the selector; here every CM conv must learn."""
    torch.manual_seed(0)
    cm = ContextualModule(in_channels=8, context_channels=8).train()
    gen = FeatureGenerator(latent_dim=8, embedding_dim=5, out_dim=8, hidden_dims=(16,), dropout=0.0)
    out = cm(torch.randn(2, 8, 6, 6))
    z = out.z.permute(0, 2, 3, 1).reshape(-1, 8)
    fake = gen(z, torch.randn(z.shape[0], 5))
    loss = reconstruction_loss(fake, out.x.detach().permute(0, 2, 3, 1).reshape(-1, 8)) + kl_divergence(
        out.mu.flatten(), out.logvar.flatten()
    )
    loss.backward()
    for name, p in cm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert cm.selector.weight.grad.abs().sum() > 0


def test_generator_maps_and_pixel_lists_agree():
    torch.manual_seed(0)
    gen = FeatureGenerator(latent_dim=4, embedding_dim=3, out_dim=6, hidden_dims=(10, 9)).eval()
    z, w = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
    maps = gen(z, w)
    pixels = gen(z.permute(0, 2, 3, 1).reshape(-1, 4), w.permute(0, 2, 3, 1).reshape(-1, 3))
    assert maps.shape == (2, 6, 5, 5)
    torch.testing.assert_close(maps.permute(0, 2, 3, 1).reshape(-1, 6), pixels)
    with pytest.raises(ValueError, match="output_activation"):
        FeatureGenerator(latent_dim=1, embedding_dim=1, out_dim=1, output_activation="tanh")


def _grads_of(module, output):
    module.zero_grad(set_to_none=True)
    output.sum().backward()
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_discriminator_and_classifier_share_exactly_one_conv():
    torch.manual_seed(0)
    heads = DiscriminatorClassifier(in_channels=6, num_classes=5, hidden_dim=7, dropout=0.0)
    x = torch.randn(10, 6)
    cls_params = _grads_of(heads, heads(cls_input=x)[0])
    disc_params = _grads_of(heads, heads(disc_input=x)[1])
    assert cls_params == {"shared.weight", "shared.bias", "classifier.weight", "classifier.bias"}
    assert disc_params == {"shared.weight", "shared.bias", "discriminator.weight", "discriminator.bias"}
    convs = [m for m in heads.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.kernel_size == (1, 1) for c in convs)
    assert heads(cls_input=x)[0].shape == (10, 5) and heads(disc_input=x)[1].shape == (10,)
    # Maps work too, with the same numbers per pixel.
    maps = heads.eval().classify(x.T.reshape(1, 6, 2, 5))
    torch.testing.assert_close(maps.reshape(5, 10).T, heads(cls_input=x)[0])


def test_frozen_discriminator_passes_gradient_to_input_only():
    heads = DiscriminatorClassifier(in_channels=4, num_classes=3, hidden_dim=5, dropout=0.0)
    x = torch.randn(6, 4, requires_grad=True)
    _, d = heads(disc_input=x, frozen_discriminator=True)
    d.sum().backward()
    assert all(p.grad is None for p in heads.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_losses_values():
    logits = torch.tensor([0.0, 2.0])
    s = torch.sigmoid(logits)
    torch.testing.assert_close(adversarial_loss(logits, 1.0), ((s - 1) ** 2).mean())
    torch.testing.assert_close(adversarial_loss(logits, 0.0, "l1"), s.mean())
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(reconstruction_loss(a, b, normalization="channel_mean"), ((a - b) ** 2).mean())
    # Eq. 1: per pixel the squared L2 norm over the l = 3 channels, averaged over the 5 pixels.
    per_pixel = torch.stack([torch.dot(a[i] - b[i], a[i] - b[i]) for i in range(5)])
    torch.testing.assert_close(reconstruction_loss(a, b, normalization="channel_sum"), per_pixel.mean())
    torch.testing.assert_close(reconstruction_loss(a, b, normalization="channel_sum"),
                               3 * reconstruction_loss(a, b, normalization="channel_mean"))
    with pytest.raises(ValueError, match="REC_NORMALIZATION"):
        reconstruction_loss(a, b, normalization="pixel_sum")
    assert mmd_loss(a, a).abs().item() < 1e-6 and mmd_loss(a, b + 3).item() > 0
    with pytest.raises(ValueError, match="REC_LOSS"):
        reconstruction_loss(a, b, "l3")


def test_losses_are_zero_without_pixels():
    empty = torch.zeros(0, 4, requires_grad=True)
    for loss in (
        kl_divergence(empty, empty),
        reconstruction_loss(empty, empty),
        adversarial_loss(empty[:, 0], 1.0),
        classification_loss(empty, torch.zeros(0, dtype=torch.long)),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


def test_dilated_resnet_strides_and_aspp_sum():
    net = make_dilated_resnet(num_blocks=(1, 1, 1, 1), dilations=(1, 1, 2, 4), stem_out_channels=8,
                              res2_out_channels=16, bottleneck_channels=4, norm="FrozenBN")
    assert net.output_shape()["res5"].stride == 8  # DeepLab-v2: output stride 8
    out = net(torch.randn(1, 3, 64, 64))["res5"]
    assert out.shape == (1, 128, 8, 8)
    aspp = ASPPL(128, 10, (6, 12, 18, 24))
    expected = sum(c(out) for c in aspp.convs)
    torch.testing.assert_close(aspp(out), expected)
    assert [c.dilation for c in aspp.convs] == [(6, 6), (12, 12), (18, 18), (24, 24)]


def test_contextual_module_detach_context_branch_input_keeps_latent_losses_out_of_the_backbone():
    torch.manual_seed(0)
    f = torch.randn(1, 6, 5, 5, requires_grad=True)
    for detach, expect_grad in ((False, True), (True, False)):
        cm = ContextualModule(in_channels=6, detach_context_branch_input=detach).train()
        out = cm(f)
        f.grad = None
        kl_divergence(out.mu.flatten(), out.logvar.flatten()).backward(retain_graph=True)
        assert (f.grad is not None and f.grad.abs().sum() > 0) == expect_grad
        f.grad = None
        out.x.sum().backward()  # X = F + F * sigmoid(Z) always reaches F
        assert f.grad.abs().sum() > 0


def test_contextual_module_sigmoid_output_option():
    cm = ContextualModule(in_channels=4, sigmoid_output=True).eval()
    f = torch.randn(1, 4, 3, 3) * 10
    out = cm(f)
    torch.testing.assert_close(out.x, torch.sigmoid(f + f * torch.sigmoid(out.mu)))


def test_classwise_mmd_with_median_bandwidths_is_scale_free():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 50 + [1] * 50)
    real = torch.randn(100, 4) + 4.0 * labels[:, None]
    shifted = {0: 2.0, 1: 0.0}  # generated class 0 lies off its real features; class 1 matches

    def make_generate(scale):
        def generate(lab):
            return scale * (torch.randn(len(lab), 4) + 4.0 * lab[:, None] + torch.tensor([shifted[int(c)] for c in lab])[:, None])
        return generate

    values = []
    for scale in (1.0, 10.0):
        torch.manual_seed(1)
        x = scale * real
        bands = [b * median_distance(x) for b in (0.25, 0.5, 1.0)]
        values.append(float(classwise_mmd_loss(x, labels, make_generate(scale), bands)))
    assert values[0] > 0.05
    assert values[1] == pytest.approx(values[0], rel=1e-4)
    assert median_distance(torch.zeros(1, 4)) == 1.0  # too few rows: a neutral scale, not NaN
