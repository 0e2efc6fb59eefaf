# Copyright (c) CaGNet-D2 contributors.
"""The CaGNet meta-architecture and the two training steps, on the tiny built-in config."""
import copy

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from cagnet.engine import FINETUNING, TRAINING, CaGNetTrainer, PhaseSchedule

from cagnet.data.datasets.register_synthetic_scenes import CLASS_SET

from conftest import tiny_cfg


def _batch(n=2, h=40, w=48, num_classes=len(CLASS_SET.class_names), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, h, w), generator=g).float(),
            "sem_seg": torch.randint(0, num_classes, (h, w), generator=g),
        }
        for _ in range(n)
    ]


@pytest.fixture
def model(tiny_scenes):
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_training_forward_returns_finite_losses(model):
    batch = _batch()
    for b in batch:
        b["sem_seg"][:5] = 255
    losses = model.train()(batch)
    expected = {"loss_d_real", "loss_d_fake", "loss_cls", "loss_adv", "loss_rec", "loss_kl"}
    # the built-in config classifies generated seen features too, and fits G(z ~ N(0, I), w) by MMD
    assert model.fake_cls_weight > 0 and model.prior_mmd_weight > 0
    assert set(losses) == expected | {"loss_cls_fake", "loss_prior_mmd"}
    model.fake_cls_weight = model.prior_mmd_weight = 0.0
    assert set(model(batch)) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())


def test_prior_mmd_trains_only_the_generator_and_falls_as_g_fits(model):
    batch = _batch()
    model.train()
    feats = model.extract_features(batch)
    loss = model.prior_mmd_loss(feats)
    model.zero_grad(set_to_none=True)
    loss.backward()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {"generator"}
    # a generator that returns real features of the asked class has a far smaller MMD
    real, labels = feats.real.detach(), feats.labels
    means = {int(c): real[labels == c].mean(0) for c in labels.unique()}

    class Oracle(torch.nn.Module):
        latent_dim = model.generator.latent_dim

        def forward(self, z, w):
            cls = [int(torch.argmin((model.class_embeddings - v).abs().sum(1))) for v in w]
            picks = torch.stack([real[labels == c][torch.randint(int((labels == c).sum()), ())] for c in cls])
            return picks + 0.0 * z

    with torch.no_grad():
        before = float(model.prior_mmd_loss(feats))
        model.generator = Oracle()
        after = float(model.prior_mmd_loss(feats))
    assert len(means) > 1 and after < 0.5 * before


def test_all_ignored_batch_gives_zero_losses_not_nan(model):
    batch = _batch()
    for b in batch:
        b["sem_seg"][:] = 255
    losses = model.train()(batch)
    assert all(v.item() == 0.0 for v in losses.values())


def test_inference_returns_logits_over_all_classes_at_input_size(model):
    model.eval()
    batch = [{"image": torch.rand(3, 37, 45) * 255}, {"image": torch.rand(3, 40, 40) * 255, "height": 80, "width": 60}]
    with torch.no_grad():
        out = model(batch)
    k = CLASS_SET.num_classes
    assert out[0]["sem_seg"].shape == (k, 37, 45)
    assert out[1]["sem_seg"].shape == (k, 80, 60)
    assert model.num_classes == k and len(model.unseen_ids) == len(CLASS_SET.unseen_ids)


def test_finetune_label_sampling_ratio(model):
    torch.manual_seed(0)
    labels = model.sample_finetune_labels(20000)
    unseen = torch.isin(labels, model.unseen_ids)
    assert abs(unseen.float().mean().item() - 0.5) < 0.02
    # every class appears, seen ones uniformly within the seen group
    assert set(labels.tolist()) == set(range(CLASS_SET.num_classes))


class _NoDataLoader:
    def __iter__(self):
        raise AssertionError("the finetuning step must not read images")


def _step(trainer, iteration):
    inner = trainer._trainer
    inner.iter = iteration
    with EventStorage(iteration) as storage:
        inner.storage = storage
        inner.run_step()


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_finetuning_step_leaves_backbone_and_cm_bit_identical(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path))
    assert trainer._trainer.phases.phase(4) == FINETUNING
    _step(trainer, 0)  # a training step first, so that optimiser state exists (momentum, Adam)
    model = trainer.model
    frozen = {"backbone": _snapshot(model.backbone), "cm": _snapshot(model.contextual_module)}
    g, c, d = _snapshot(model.generator), _snapshot(model.heads.classifier), _snapshot(model.heads.discriminator)
    trainer._trainer._data_loader_iter_obj = None
    trainer._trainer._data_loader_factory = lambda seed, start: _NoDataLoader()
    _step(trainer, 4)
    for name, module in (("backbone", model.backbone), ("cm", model.contextual_module)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, frozen[name][k]), f"{name}.{k} changed in a finetuning step"
    assert any(not torch.equal(v, g[k]) for k, v in model.generator.state_dict().items())
    assert any(not torch.equal(v, c[k]) for k, v in model.heads.classifier.state_dict().items())
    # D's own head is not trained without real features.
    assert all(torch.equal(v, d[k]) for k, v in model.heads.discriminator.state_dict().items())


def test_finetuning_lr_factor_scales_the_finetuning_update(tiny_scenes, tmp_path):
    """SOLVER.CAGNET_SCHEDULE.FINETUNING_LR_FACTOR: the finetuning step's parameter update is that multiple
    of the unscaled one (SGD with momentum and Adam are both linear in the lr), and the groups'
    lr is the scheduler's again after the step."""
    trainer = CaGNetTrainer(tiny_cfg(tmp_path))
    _step(trainer, 0)
    inner, model = trainer._trainer, trainer.model
    inner._data_loader_iter_obj = None
    inner._data_loader_factory = lambda seed, start: _NoDataLoader()
    start = (copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()))
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    deltas = {}
    for factor in (1.0, 0.25):
        model.load_state_dict(start[0])
        trainer.optimizer.load_state_dict(copy.deepcopy(start[1]))
        inner.finetuning_lr_factor = factor
        _step(trainer, 4)
        deltas[factor] = {n: (p - start[0][n]).detach().clone() for n, p in model.named_parameters()}
        assert [g["lr"] for g in trainer.optimizer.param_groups] == lrs
    moved = [n for n in deltas[1.0] if n.startswith(("generator.", "heads.classifier.")) and deltas[1.0][n].abs().max() > 0]
    assert moved
    for n in moved:
        torch.testing.assert_close(deltas[0.25][n], 0.25 * deltas[1.0][n], rtol=1e-3, atol=1e-7)
    assert all(deltas[0.25][n].abs().max() == 0 for n in deltas[1.0] if n.startswith(("backbone.", "contextual_module.")))


def test_training_step_updates_d_first_then_the_rest(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path))
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(trainer, 0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for prefix in ("backbone.", "contextual_module.", "generator.", "heads.shared.", "heads.classifier.",
                   "heads.discriminator."):
        assert any(n.startswith(prefix) for n in changed), prefix
    d_params = {id(p) for g in trainer.optimizer_d.param_groups for p in g["params"]}
    rest = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    shared = {id(p) for p in model.heads.shared.parameters()}
    assert d_params & rest == shared  # only the shared conv is in both optimisers
    assert {id(p) for p in model.heads.discriminator.parameters()} <= d_params - rest
    assert {id(p) for p in model.backbone.parameters()} <= rest - d_params


def test_phase_schedule():
    s = PhaseSchedule(training_only_iters=3, training_block=2, finetuning_block=2)
    phases = [s.phase(i) for i in range(10)]
    assert phases == [TRAINING] * 5 + [FINETUNING] * 2 + [TRAINING] * 2 + [FINETUNING]
    assert [s.num_training_steps(i) for i in range(11)] == [0, 1, 2, 3, 4, 5, 5, 5, 6, 7, 7]
    assert all(PhaseSchedule(5, 100, 0).phase(i) == TRAINING for i in range(400))
    with pytest.raises(ValueError):
        PhaseSchedule(0, 0, 0)


def test_bf16_autocast_steps_compute_float32_losses_in_bfloat16_convs(tiny_scenes, tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = True
    # Forced: "auto" picks float32 on a CPU without native bfloat16 (tests/test_precision.py).
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    trainer = CaGNetTrainer(cfg)
    model = trainer.model
    conv_dtypes, losses = [], []
    model.backbone.register_forward_hook(lambda m, i, o: conv_dtypes.append(o["aspp"].dtype))
    for loss_fn in ("training_losses", "finetuning_losses"):
        orig = getattr(model, loss_fn)

        def record(*a, _orig=orig, **k):
            out = _orig(*a, **k)
            losses.append(out)
            return out

        setattr(model, loss_fn, record)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(trainer, 0)  # training step
    _step(trainer, 4)  # finetuning step
    assert conv_dtypes == [torch.bfloat16]
    assert len(losses) == 2
    for out in losses:
        for name, v in out.items():
            assert v.dtype == torch.float32 and torch.isfinite(v), name
    # parameters stay float32 and learn
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(p, before["backbone." + n]) for n, p in model.backbone.named_parameters())


def test_rec_normalization_key_sums_or_averages_over_channels(tiny_scenes):
    rec = {}
    for norm in ("channel_mean", "channel_sum"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(None, "MODEL.CAGNET.REC_NORMALIZATION", norm)).train()
        assert model.rec_normalization == norm
        torch.manual_seed(1)
        feats = model.extract_features(_batch())
        rec[norm] = model.training_losses(feats)["loss_rec"]
        channels = feats.real.shape[1]
    torch.testing.assert_close(rec["channel_sum"], channels * rec["channel_mean"])


def test_training_step_softmax_is_over_all_classes(tiny_scenes):
    # As in the reference code: real seen pixels also push the unseen logits down, so the unseen
    # rows of C learn in the training step too.
    torch.manual_seed(0)
    model = build_model(tiny_cfg(None)).train()
    seen, unseen = model.seen_ids, model.unseen_ids
    batch = _batch()
    for b in batch:  # seen labels only, as the training mapper gives
        b["sem_seg"] = seen[b["sem_seg"] % len(seen)]
    model.heads.eval()  # no dropout in C, so that the loss can be recomputed below
    torch.manual_seed(1)
    feats = model.extract_features(batch)
    loss = model.training_losses(feats)
    model.zero_grad(set_to_none=True)
    loss["loss_cls"].backward()
    logits = model.heads.classify(feats.real).detach()
    expected = torch.nn.functional.cross_entropy(logits, feats.labels)
    assert float(loss["loss_cls"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(model.heads.classifier.weight.grad.flatten(1)[unseen].abs().sum()) > 0
