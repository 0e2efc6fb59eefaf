"""MODEL.CAGNET.FINETUNE_LATENT "context_bank": G's finetuning-step latent code drawn from CM's
codes of labelled training pixels instead of N(0, I)."""
import pytest
import torch

from cagnet.config_validation import ConfigValueError, validate_config
from cagnet.modeling import CaGNet

from conftest import tiny_cfg
from test_model import _batch

BANK = ("MODEL.CAGNET.FINETUNE_LATENT", "context_bank", "MODEL.CAGNET.LATENT_BANK_SIZE", 64)


def _model(*opts):
    torch.manual_seed(0)
    return CaGNet(tiny_cfg(None, *opts)).train()


def test_training_steps_fill_the_bank_with_cm_codes_of_labelled_pixels(tiny_scenes):
    model = _model(*BANK)
    assert int(model.latent_bank_written) == 0
    captured = {}
    model.contextual_module.register_forward_hook(lambda m, inp, out: captured.update(mu=out.mu, logvar=out.logvar))
    batch = _batch()
    model.extract_features(batch)
    assert int(model.latent_bank_written) == 64 // 16
    stored = model.latent_bank[:4]
    assert torch.count_nonzero(model.latent_bank[4:]) == 0
    # Each stored row is [mu, logvar] of one labelled pixel of the batch.
    images = model.preprocess_image(batch)
    labels = model.feature_labels(batch, images.tensor.shape[-2:], captured["mu"].shape[-2:])
    codes = torch.cat([captured["mu"], captured["logvar"]], dim=1).permute(0, 2, 3, 1)[labels != model.ignore_value]
    for row in stored:
        assert torch.isclose(codes, row, atol=1e-6).all(dim=1).any()
    for _ in range(16):  # a ring buffer: it wraps, keeps its size and counts every code
        model.extract_features(batch)
    assert int(model.latent_bank_written) == 17 * 4 and model.latent_bank.shape[0] == 64
    assert "latent_bank" in model.state_dict() and "latent_bank_written" in model.state_dict()
    model.eval()  # inference does not write
    with torch.no_grad():
        model.extract_features(batch)
    assert int(model.latent_bank_written) == 17 * 4


def test_generated_features_use_the_bank_codes(tiny_scenes):
    model = _model(*BANK).eval()
    labels = torch.tensor([0, 3, 5])
    torch.manual_seed(1)
    empty = model.generate_features(labels)  # empty bank: N(0, I), as without the option
    prior = _model().eval()
    prior.generator.load_state_dict(model.generator.state_dict())
    torch.manual_seed(1)
    torch.testing.assert_close(empty, prior.generate_features(labels))
    code = torch.linspace(-1, 1, model.generator.latent_dim)
    with torch.no_grad():
        model.latent_bank[:] = torch.cat([code, torch.full_like(code, -30.0)])  # sigma ~ 3e-7: z = mu
        model.latent_bank_written.fill_(5)
        expected = model.generator(code.expand(3, -1), model.class_embeddings[labels])
        torch.testing.assert_close(model.generate_features(labels), expected, atol=1e-5, rtol=1e-5)


def test_off_by_default_and_refused_without_cm(tiny_scenes):
    assert "latent_bank" not in _model().state_dict()
    cfg = tiny_cfg(None, *BANK, "MODEL.CONTEXTUAL_MODULE.ENABLED", False)
    with pytest.raises(ConfigValueError, match="FINETUNE_LATENT"):
        validate_config(cfg)
