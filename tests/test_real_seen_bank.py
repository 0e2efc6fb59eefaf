"""MODEL.CAGNET.FINETUNE_SEEN_FEATURES "real_bank": the finetuning step's seen pixels are real
features (CM's output X) of recent training steps; only the unseen ones are generated."""
import pytest
import torch

from cagnet.config_validation import ConfigValueError, validate_config

from conftest import tiny_cfg
from test_latent_bank import _model
from test_model import _batch

BANK = ("MODEL.CAGNET.FINETUNE_SEEN_FEATURES", "real_bank", "MODEL.CAGNET.REAL_FEATURE_BANK_SIZE", 64)


def test_training_steps_bank_real_features_with_their_labels(tiny_scenes):
    model = _model(*BANK)
    assert int(model.real_bank_written) == 0
    feats = model.extract_features(_batch())
    assert int(model.real_bank_written) == 64 // 16
    assert torch.count_nonzero(model.real_bank[4:]) == 0
    for row, label in zip(model.real_bank[:4], model.real_bank_labels[:4]):
        match = torch.isclose(feats.real, row, atol=1e-6).all(dim=1)
        assert match.any() and (feats.labels[match] == label).all()
    for _ in range(16):  # a ring buffer
        model.extract_features(_batch())
    assert int(model.real_bank_written) == 17 * 4 and model.real_bank.shape[0] == 64
    assert {"real_bank", "real_bank_labels", "real_bank_written"} <= set(model.state_dict())
    model.eval()
    with torch.no_grad():
        model.extract_features(_batch())
    assert int(model.real_bank_written) == 17 * 4


def test_finetuning_seen_pixels_come_from_the_bank_unseen_from_g(tiny_scenes):
    model = _model(*BANK)
    labels = model.sample_finetune_labels(200)
    unseen = torch.isin(labels, model.unseen_ids)
    assert 0 < int(unseen.sum()) < 200
    real, generate = model.finetune_real_seen(labels)  # empty bank: everything generated
    assert real is None and generate.all()
    with torch.no_grad():
        model.real_bank[:3] = torch.arange(3.0)[:, None] + 1
        model.real_bank_labels[:3] = model.seen_ids[:3]
        model.real_bank_written.fill_(3)
    real, generate = model.finetune_real_seen(labels)
    assert torch.equal(generate, unseen)
    feats, real_labels = real
    assert feats.shape == (int((~unseen).sum()), model.feature_dim)
    # each real pixel is a banked row with the banked label
    idx = feats[:, 0].long() - 1
    assert set(idx.tolist()) <= {0, 1, 2} and torch.equal(real_labels, model.seen_ids[:3][idx])
    # C's cross-entropy covers the generated and the real pixels, G's adversarial term only the generated
    fake = model.generate_features(labels[generate])
    head_calls = []
    model.heads.register_forward_hook(lambda m, inp, kw, out: head_calls.append(kw), with_kwargs=True)
    losses = model.finetuning_losses(fake, labels[generate], real_seen=real)
    assert head_calls[0]["cls_input"].shape[0] == 200 and head_calls[0]["disc_input"].shape[0] == fake.shape[0]
    assert torch.equal(head_calls[0]["cls_input"][fake.shape[0]:], feats)
    assert {"loss_cls_generated", "loss_adv_generated"} == set(losses)


def test_default_generates_every_pixel_and_bad_value_is_refused(tiny_scenes):
    model = _model()
    assert "real_bank" not in model.state_dict()
    labels = model.sample_finetune_labels(50)
    real, generate = model.finetune_real_seen(labels)
    assert real is None and generate.all()
    with pytest.raises(ConfigValueError, match="FINETUNE_SEEN_FEATURES"):
        validate_config(tiny_cfg(None, "MODEL.CAGNET.FINETUNE_SEEN_FEATURES", "real"))
