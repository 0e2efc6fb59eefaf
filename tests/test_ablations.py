# Copyright (c) CaGNet-D2 contributors.
"""The paper's ablations are config overrides that change exactly what they name; calibrated
CaGNet lowers only the seen scores; the feature diagnostics give finite numbers for every class."""
import math

import pytest
import torch

from cagnet.engine import PhaseSchedule
from cagnet.modeling import CaGNet
from cagnet.modeling.losses import kl_divergence
from cagnet.benchmark.ablations import ABLATION_TABLES, ablation_tables, row_slug, select_tables, unique_runs
from cagnet.analysis.feature_diagnostics import collect_real_features, feature_diagnostics
from cagnet.analysis.generator_probe import collect_pixel_features

from conftest import tiny_cfg
from test_model import _batch


def _model(*opts):
    torch.manual_seed(0)
    return CaGNet(tiny_cfg(None, *opts)).train()


def _params(module):
    return {n for n, _ in module.named_parameters()}


def test_every_ablation_row_builds_and_trains_one_step(tiny_scenes):
    tables = ablation_tables(21, 5)
    assert [t[0] for t in tables] == ABLATION_TABLES
    runs = unique_runs(tables)
    assert runs["cagnet"] == ()  # the full model appears in several tables as one run
    assert len(runs) == len({tuple(v) for v in runs.values()})
    for name, overrides in runs.items():
        model = _model(*overrides)
        losses = model(_batch())
        assert losses and all(math.isfinite(float(v.detach())) for v in losses.values()), name
    ratio = select_tables("table5", 21, 5)[0][2][0]
    assert ratio.overrides[1] == f"{5 / 26:.6f}" and row_slug(ratio).startswith("abl_")
    with pytest.raises(ValueError, match="table9"):
        select_tables("table2,table9", 21, 5)


def test_without_cm_there_are_no_cm_parameters_and_g_takes_noise(tiny_scenes):
    full, no_cm = _model(), _model("MODEL.CONTEXTUAL_MODULE.ENABLED", False)
    assert no_cm.contextual_module is None and not any(n.startswith("contextual_module.") for n in _params(no_cm))
    assert _params(full) - _params(no_cm) == {"contextual_module." + n for n in _params(full.contextual_module)}
    captured = []
    no_cm.generator.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach().clone()))
    feats = no_cm.extract_features(_batch())
    z = captured[0]
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1  # z ~ N(0, I)
    with torch.no_grad():  # X = F: C sees E's features as they are
        no_cm.eval()
        images = no_cm.preprocess_image(_batch())
        logits, ctx = no_cm.segment_features(images)
        assert torch.equal(ctx.x, no_cm.backbone(images.tensor)["aspp"])
        no_cm.train()
    losses = no_cm.training_losses(feats)
    assert "loss_kl" not in losses and {"loss_cls", "loss_adv", "loss_rec"} <= set(losses)


def test_without_g_there_is_no_g_no_d_and_no_finetuning_step(tiny_scenes):
    model = _model("MODEL.FEATURE_GENERATOR.ENABLED", False)
    assert model.generator is None and model.heads.discriminator is None
    assert not any(n.startswith(("generator.", "heads.discriminator.")) for n in _params(model))
    feats = model.extract_features(_batch())
    assert feats.fake is None
    assert model.discriminator_losses(feats) == {}
    assert set(model.training_losses(feats)) == {"loss_cls", "loss_kl"}
    cfg = tiny_cfg(None, "MODEL.FEATURE_GENERATOR.ENABLED", False)
    phases = PhaseSchedule.from_config(cfg)
    assert all(phases.phase(i) == "training" for i in range(50))
    assert phases.num_training_steps(50) == 50


@pytest.mark.parametrize("key,absent", [("KL_WEIGHT", "loss_kl"), ("REC_WEIGHT", "loss_rec"), ("ADV_WEIGHT", "loss_adv")])
def test_a_loss_with_weight_zero_is_absent_and_the_rest_unchanged(tiny_scenes, key, absent):
    # Without dropout: its masks are drawn in the order of the forward passes, and a loss that is not
    # computed skips one (no adversarial loss: no D pass over G's features), so every later draw differs.
    no_dropout = ("MODEL.FEATURE_GENERATOR.DROPOUT", 0.0, "MODEL.DISCRIMINATOR_CLASSIFIER.DROPOUT", 0.0)
    full = _model(*no_dropout)
    torch.manual_seed(1)
    full_losses = full.training_losses(full.extract_features(_batch()))
    ablated = _model(*no_dropout, f"MODEL.CAGNET.{key}", 0.0)
    torch.manual_seed(1)
    feats = ablated.extract_features(_batch())
    losses = ablated.training_losses(feats)
    assert set(full_losses) - set(losses) == {absent}
    for k in losses:
        assert torch.allclose(losses[k], full_losses[k]), k
    if key == "ADV_WEIGHT":
        assert ablated.discriminator_losses(feats) == {}  # D does not learn without the adversarial loss
        assert "loss_adv_generated" not in ablated.finetuning_losses(*_generated(ablated))


def _generated(model):
    labels = model.sample_finetune_labels(64)
    return model.generate_features(labels), labels


def test_context_module_variants(tiny_scenes):
    x = torch.randn(2, 16, 10, 12)
    one = _model("MODEL.CONTEXTUAL_MODULE.KERNEL_SIZE", 1).contextual_module
    assert all(c.kernel_size == (1, 1) for c in one.context_convs)
    none = _model("MODEL.CONTEXTUAL_MODULE.SELECTOR", "none").contextual_module
    assert none.selector is None and torch.equal(none(x).scale_weights, torch.ones(2, 3, 10, 12))
    glob = _model("MODEL.CONTEXTUAL_MODULE.SELECTOR", "global").contextual_module
    w = glob(x).scale_weights
    assert torch.allclose(w, w[:, :, :1, :1].expand_as(w)) and not torch.allclose(w[0], w[1])
    pixel = _model().contextual_module(x).scale_weights
    assert not torch.allclose(pixel, pixel[:, :, :1, :1].expand_as(pixel))
    last = _model("MODEL.CONTEXTUAL_MODULE.MULTI_SCALE", False).contextual_module
    assert last.latent.in_channels == last.context_convs[-1].out_channels
    assert _model().contextual_module.latent.in_channels == 3 * last.latent.in_channels


def test_masked_context_convs_do_not_see_the_pixel_itself(tiny_scenes):
    """conv (mask): changing F at one pixel leaves that pixel's latent mean unchanged, while the
    unmasked module's changes; the weights (and so checkpoints) are those of the unmasked module.
    (Without a selector: the pixel selector's 3x3 conv reads neighbouring maps, which see the pixel.)"""
    masked = _model("MODEL.CONTEXTUAL_MODULE.MASK_CENTER", True, "MODEL.CONTEXTUAL_MODULE.SELECTOR", "none")
    masked = masked.contextual_module.eval()
    full = _model("MODEL.CONTEXTUAL_MODULE.SELECTOR", "none").contextual_module.eval()
    assert masked.state_dict().keys() == full.state_dict().keys()
    x = torch.randn(1, 16, 24, 24)
    poked = x.clone()
    poked[0, :, 12, 12] += 5.0
    with torch.no_grad():
        for module, moves in ((masked, False), (full, True)):
            before, after = module(x).mu, module(poked).mu
            changed = (after - before).abs().amax(dim=1)[0]
            assert bool(changed[12, 12] > 1e-4) == moves
            assert float(changed.max()) > 1e-4  # the neighbours do see it
    with pytest.raises(ValueError, match="KERNEL_SIZE"):
        _model("MODEL.CONTEXTUAL_MODULE.MASK_CENTER", True, "MODEL.CONTEXTUAL_MODULE.KERNEL_SIZE", 2)


def test_calibrated_cagnet_lowers_only_the_seen_scores(tiny_scenes):
    model = _model().eval()
    batch = [{"image": torch.rand(3, 32, 40) * 255}]
    with torch.no_grad():
        before = model(batch)[0]["sem_seg"]
        model.set_calibration(0.75)
        after = model(batch)[0]["sem_seg"]
    seen, unseen = model.seen_ids, model.unseen_ids
    torch.testing.assert_close(before[seen] - after[seen], torch.full_like(before[seen], 0.75))
    assert torch.equal(before[unseen], after[unseen])
    assert model.state_dict()["calibration"].item() == 0.75  # saved with the weights


def test_feature_diagnostics_are_finite_for_every_class(tiny_scenes):
    cfg = tiny_cfg(None)
    model = _model().eval()
    real, labels, latent = collect_real_features(cfg, model, "synthetic_scenes_mini_val", 8)
    assert latent.shape == (real.shape[0], 2 * real.shape[1])  # [mu, logvar] of CM per pixel
    result = feature_diagnostics(model, real, labels, generated_per_class=32, latent=latent)
    present = set(labels.tolist())
    assert len(result["classes"]) == len(present) > 2
    for row in result["classes"]:
        numbers = [v for k, v in row.items() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) for v in numbers), row
        assert 0 <= row["acc_real"] <= 1 and 0 <= row["acc_generated"] <= 1
    unseen_rows = [r for r in result["classes"] if not r["seen"]]
    assert all("true_above_all_seen" in r and "best_among_unseen" in r for r in unseen_rows)
    assert all(math.isfinite(v) for v in result["seen"].values())
    assert all(r["kl"] >= 0 and 0 <= r["acc_generated_context"] <= 1 for r in result["classes"])
    # The latent code's KL is the model's own KL term over the same pixels (pixel-weighted).
    mu, logvar = latent.chunk(2, dim=1)
    pixel_weighted = sum(r["kl"] * r["pixels"] for r in result["classes"]) / labels.numel()
    assert math.isclose(pixel_weighted, float(kl_divergence(mu, logvar)), rel_tol=1e-4)
    # Without CM there is no latent code, and no latent rows.
    no_cm = _model("MODEL.CONTEXTUAL_MODULE.ENABLED", False).eval()
    real, labels, latent = collect_real_features(cfg, no_cm, "synthetic_scenes_mini_val", 4)
    assert latent is None
    assert all("kl" not in r for r in feature_diagnostics(no_cm, real, labels, generated_per_class=8)["classes"])
    # The generator probe's pixels are the same pixels, with CM's mu (zeros without CM).
    x, mu_probe, labels_probe = collect_pixel_features(cfg, model, "synthetic_scenes_mini_val", 8)
    real, labels, latent = collect_real_features(cfg, model, "synthetic_scenes_mini_val", 8)
    assert torch.equal(x, real) and torch.equal(labels_probe, labels)
    assert torch.equal(mu_probe, latent[:, : real.shape[1]]) and mu_probe.abs().sum() > 0
    x, mu_probe, _ = collect_pixel_features(cfg, no_cm, "synthetic_scenes_mini_val", 4)
    assert mu_probe.shape == x.shape and not mu_probe.any()


def test_finetune_detach_generated_keeps_cross_entropy_out_of_g(tiny_scenes):
    """FINETUNE_DETACH_GENERATED: C's loss on generated features still trains C, and no longer G."""
    for detach in (False, True):
        model = _model("MODEL.CAGNET.FINETUNE_DETACH_GENERATED", detach, "MODEL.CAGNET.FINETUNE_ADV_WEIGHT", 0.0)
        torch.manual_seed(2)
        losses = model.finetuning_losses(*_generated(model))
        assert set(losses) == {"loss_cls_generated"}
        losses["loss_cls_generated"].backward()
        g_grad = [p.grad for p in model.generator.parameters()]
        assert all(g is None for g in g_grad) == detach
        assert float(model.heads.classifier.weight.grad.abs().sum()) > 0
