# Copyright (c) CaGNet-D2 contributors.
"""SOLVER.CAGNET_SCHEDULE.MIXED (the reference code's second run as a phase), its label prior and its
content loss: E and CM frozen bit-for-bit with no optimiser state, the phase's own learning rates
and loss weights, the unseen fraction of the drawn labels, resume inside the phase."""
import glob
import math
import os

import pytest
import torch
import yaml

from detectron2.engine import HookBase

from cagnet.config_validation import ConfigValueError, validate_config
from cagnet.engine import CaGNetTrainer
from cagnet.modeling.losses import label_run_mmd_loss, label_runs

from conftest import REPO, load_cpu_config, tiny_cfg

# Phase 1: iterations 0-3 (training steps only); mixed phase: 4-11, blocks of 2 + 2.
MIXED = ["SOLVER.MAX_ITER", 12, "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 4, "SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED", True,
         "SOLVER.CAGNET_SCHEDULE.MIXED.BASE_LR", 4e-4, "SOLVER.CAGNET_SCHEDULE.MIXED.D_BASE_LR", 2e-4,
         "SOLVER.CAGNET_SCHEDULE.MIXED.STEPS", [3, 6], "SOLVER.CAGNET_SCHEDULE.MIXED.GAMMA", 0.5, "TEST.EVAL_PERIOD", 0]


class _Record(HookBase):
    """Per iteration, before its step: the lr of every group of the four optimisers; and the
    state of E and CM at the end of phase 1."""

    def __init__(self):
        self.lrs, self.frozen = {}, None

    def before_step(self):
        t = self.trainer
        mixed = t._trainer.mixed
        self.lrs[t.iter] = {name: [g["lr"] for g in opt.param_groups] for name, opt in
                            (("rest", t.optimizer), ("d", t.optimizer_d), ("mixed", mixed.optimizer), ("d_mixed", mixed.optimizer_d))}
        if t.iter == mixed.start:
            m = t.model
            self.frozen = {k: v.clone() for k, v in {**{"E." + k: v for k, v in m.backbone.state_dict().items()},
                                                     **{"CM." + k: v for k, v in m.contextual_module.state_dict().items()}}.items()}
            self.heads = {k: v.clone() for k, v in {**{"G." + k: v for k, v in m.generator.state_dict().items()},
                                                    **{"H." + k: v for k, v in m.heads.state_dict().items()}}.items()}


def _train(tmp_path, *extra):
    cfg = tiny_cfg(tmp_path, *MIXED, *extra)
    trainer = CaGNetTrainer(cfg)
    record = _Record()
    trainer.register_hooks([record])
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, record


@pytest.fixture(scope="module")
def mixed_run(tiny_scenes, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("mixed"))


def test_mixed_phase_leaves_e_and_cm_bit_identical_without_optimiser_state(mixed_run):
    trainer, record = mixed_run
    model = trainer.model
    now = {**{"E." + k: v for k, v in model.backbone.state_dict().items()},
           **{"CM." + k: v for k, v in model.contextual_module.state_dict().items()}}
    assert record.frozen.keys() == now.keys()
    for k, v in now.items():
        assert torch.equal(v, record.frozen[k]), f"{k} changed in the mixed phase"
    heads = {**{"G." + k: v for k, v in model.generator.state_dict().items()},
             **{"H." + k: v for k, v in model.heads.state_dict().items()}}
    moved = {k for k, v in heads.items() if not torch.equal(v, record.heads[k])}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in moved} >= {"G.mlp", "H.classifier", "H.shared", "H.discriminator"}
    frozen_ids = {id(p) for p in list(model.backbone.parameters()) + list(model.contextual_module.parameters())}
    mixed = trainer._trainer.mixed
    for opt in (trainer.optimizer, trainer.optimizer_d, mixed.optimizer, mixed.optimizer_d):
        assert not [p for p in opt.state if id(p) in frozen_ids], "E or CM has optimiser state in the mixed phase"
    # The first phase's state is dropped; the phase's own optimisers hold G + C and D, not E or CM.
    assert len(trainer.optimizer.state) == 0 and len(trainer.optimizer_d.state) == 0
    in_mixed = {id(p) for g in mixed.optimizer.param_groups for p in g["params"]}
    in_mixed_d = {id(p) for g in mixed.optimizer_d.param_groups for p in g["params"]}
    heads_ = model.heads
    assert in_mixed == {id(p) for p in [*model.generator.parameters(), *heads_.shared.parameters(), *heads_.classifier.parameters()]}
    assert in_mixed_d == {id(p) for p in [*heads_.shared.parameters(), *heads_.discriminator.parameters()]}
    assert not (in_mixed | in_mixed_d) & frozen_ids
    assert isinstance(mixed.optimizer, torch.optim.Adam) and isinstance(mixed.optimizer_d, torch.optim.Adam)


def test_each_phase_runs_at_its_own_learning_rates(mixed_run):
    trainer, record = mixed_run
    cfg = trainer.cfg
    base, start = cfg.SOLVER.BASE_LR, cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS
    for it in range(start):  # phase 1: poly over TRAINING_ONLY_ITERS (not MAX_ITER), as the step1 run
        expected = base * (1 - it / start) ** cfg.SOLVER.POLY_LR_POWER
        assert record.lrs[it]["rest"][0] == pytest.approx(expected, rel=1e-6), it
    for it in range(start, cfg.SOLVER.MAX_ITER):
        k = sum(1 for s in (3, 6) if it - start >= s)
        assert record.lrs[it]["mixed"] == pytest.approx([4e-4 * 0.5 ** k]), it
        assert record.lrs[it]["d_mixed"] == pytest.approx([2e-4 * 0.5 ** k]), it
        # The first phase's optimisers are no longer scheduled.
        assert record.lrs[it]["rest"] == record.lrs[start]["rest"]
    assert record.lrs[start]["mixed"] == pytest.approx([4e-4])


def test_each_phase_uses_its_own_loss_weights(tiny_scenes, tmp_path):
    cfg = tiny_cfg(tmp_path, *MIXED, "SOLVER.CAGNET_SCHEDULE.MIXED.CLS_WEIGHT", 0.5, "SOLVER.CAGNET_SCHEDULE.MIXED.FAKE_CLS_WEIGHT", 0.2,
                   "SOLVER.CAGNET_SCHEDULE.MIXED.FINETUNE_CLS_WEIGHT", 0.125, "SOLVER.CAGNET_SCHEDULE.MIXED.FINETUNE_ADV_WEIGHT", 0.0,
                   "SOLVER.MAX_ITER", 8)
    trainer = CaGNetTrainer(cfg)
    model = trainer.model
    seen = []
    training_losses, finetuning_losses = model.training_losses, model.finetuning_losses

    def spy(kind, fn):
        def call(*args, **kwargs):
            losses = fn(*args, **kwargs)
            seen.append((trainer.iter, kind, kwargs.get("weights"), set(losses)))
            return losses
        return call

    model.training_losses = spy("training", training_losses)
    model.finetuning_losses = spy("finetuning", finetuning_losses)
    trainer.resume_or_load(resume=False)
    trainer.train()
    by_iter = {it: (kind, w, losses) for it, kind, w, losses in seen}
    for it in range(4):  # phase 1: MODEL.CAGNET's weights (the built-in config: FAKE_CLS_WEIGHT 0.25), with KL
        kind, w, losses = by_iter[it]
        assert kind == "training" and w is None and "loss_kl" in losses and "loss_cls_fake" in losses
    for it in (4, 5):  # mixed training steps: the phase's CE weights, no KL (CM is frozen)
        kind, w, losses = by_iter[it]
        assert kind == "training" and (w.cls, w.fake_cls) == (0.5, 0.2) and "loss_kl" not in losses
    for it in (6, 7):  # mixed finetuning steps: C's CE at 0.125, no adversarial term for G
        kind, w, losses = by_iter[it]
        assert kind == "finetuning" and (w.finetune_cls, w.finetune_adv) == (0.125, 0.0)
        assert losses == {"loss_cls_generated"}


def test_phase_loss_weights_scale_the_terms(tiny_scenes):
    """The weights act on the loss terms: the same features give CE x0.5 with cls 0.5."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from cagnet.modeling.meta_arch import PhaseLossWeights
    from test_model import _batch

    model = build_model(tiny_cfg(None, "MODEL.FEATURE_GENERATOR.DROPOUT", 0.0, "MODEL.DISCRIMINATOR_CLASSIFIER.DROPOUT", 0.0))
    model.train()
    with EventStorage(0), torch.no_grad():
        torch.manual_seed(0)
        feats = model.extract_features(_batch())
        default = model.training_losses(feats)
        half = model.training_losses(feats, weights=PhaseLossWeights(cls=0.5, fake_cls=1.0, finetune_cls=1, finetune_adv=1))
    assert float(half["loss_cls"]) == pytest.approx(0.5 * float(default["loss_cls"]) / model.cls_weight)
    assert float(half["loss_cls_fake"]) == pytest.approx(float(default["loss_cls_fake"]) / model.fake_cls_weight)


@pytest.mark.parametrize("training_only", [2, 4], ids=["mid_phase", "across_the_boundary"])
def test_resume_in_the_mixed_phase_equals_an_uninterrupted_run(tiny_scenes, tmp_path, training_only):
    from test_resume import _assert_same_state, _run

    extra = ("SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED", True, "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", training_only,
             "SOLVER.CAGNET_SCHEDULE.MIXED.STEPS", [3], "SOLVER.CAGNET_SCHEDULE.MIXED.BASE_LR", 1e-3)
    full = _run(tmp_path / "full", extra=extra)
    crashed = _run(tmp_path / "stopped", crash_at=6, extra=extra)
    assert (tmp_path / "stopped" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert crashed.iter == 6
    resumed = _run(tmp_path / "stopped", resume=True, extra=extra)
    assert resumed.start_iter == 4 and resumed.iter == full.iter == 10
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    fm, rm = full._trainer.mixed, resumed._trainer.mixed
    for a, b in ((fm.optimizer, rm.optimizer), (fm.optimizer_d, rm.optimizer_d),
                 (full.optimizer, resumed.optimizer), (full.optimizer_d, resumed.optimizer_d)):
        _assert_same_state(a.state_dict(), b.state_dict())
    assert len(fm.optimizer.state) > 0
    assert fm.scheduler.state_dict() == rm.scheduler.state_dict()
    assert [g["lr"] for g in fm.optimizer.param_groups] == [g["lr"] for g in rm.optimizer.param_groups]


def test_label_prior_gives_the_configured_unseen_fraction(tiny_scenes):
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg(None, "MODEL.CAGNET.FINETUNE_UNSEEN_CLASS_WEIGHT", 10.0))
    s, u = len(model.seen_ids), len(model.unseen_ids)
    assert model.finetune_unseen_probability == pytest.approx(10 * u / (s + 10 * u))
    torch.manual_seed(0)
    labels = model.sample_finetune_labels(400_000)
    counts = torch.bincount(labels, minlength=model.num_classes).double() / labels.numel()
    unseen_share = float(counts[model.unseen_ids].sum())
    assert unseen_share == pytest.approx(10 * u / (s + 10 * u), abs=0.003)
    # Each unseen class is drawn 10 times as often as each seen class (uniform within groups).
    expected_seen = 1 / (s + 10 * u)
    torch.testing.assert_close(counts[model.seen_ids], torch.full((s,), expected_seen, dtype=torch.double), atol=1.5e-3, rtol=0)
    torch.testing.assert_close(counts[model.unseen_ids], torch.full((u,), 10 * expected_seen, dtype=torch.double), atol=3e-3, rtol=0)
    # 0: FINETUNE_UNSEEN_FRACTION as before.
    model.finetune_unseen_class_weight = 0.0
    assert model.finetune_unseen_probability == model.finetune_unseen_fraction


def _reference_content_loss(fake, real, labels, bandwidths=(2, 5, 10, 20, 40, 60)):
    """A direct reading of the reference MMDLoss: per run of equal labels, sqrt of the sum over
    kernels of W W^T * K with the scale matrix W, averaged over runs."""
    losses, begin = [], 0
    bounds = [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]] + [len(labels)]
    for end in bounds:
        a, b = fake[begin:end].double(), real[begin:end].double()
        m, n = a.shape[0], b.shape[0]
        w = torch.zeros(m + n, 2, dtype=torch.double)
        w[:m, 0], w[m:, 1] = 1.0 / m, 1.0 / n
        w -= 1.0 / (m + n)
        x = torch.cat([a, b])
        xx = x @ x.t()
        d = torch.diag(xx).repeat(m + n, 1)
        prob = xx - 0.5 * d - 0.5 * d.t()
        total = sum(((w @ w.t()) * torch.exp(prob / s)).sum() for s in bandwidths)
        losses.append(total.sqrt() if total > 0 else total * 0)
        begin = end
    return torch.stack(losses).mean()


@pytest.mark.parametrize("max_chunk", [1, 16, 4096])
def test_content_loss_is_the_reference_mmd_per_label_run(max_chunk):
    torch.manual_seed(0)
    labels = torch.tensor([3, 3, 3, 1, 1, 3, 0, 0, 0, 0, 2] * 7)
    fake, real = torch.rand(len(labels), 6) * 3, torch.rand(len(labels), 6) * 3
    assert label_runs(labels)[:7].tolist() == [0, 0, 0, 1, 1, 2, 3]
    ours = label_run_mmd_loss(fake, real, labels, max_chunk=max_chunk)
    assert float(ours) == pytest.approx(float(_reference_content_loss(fake, real, labels)), rel=1e-5)
    # Identical features: 0 up to rounding (the square root magnifies it), with finite gradients.
    same = fake.clone().requires_grad_(True)
    loss = label_run_mmd_loss(same, fake, labels, max_chunk=max_chunk)
    loss.backward()
    assert float(loss) < 1e-3 and torch.isfinite(same.grad).all()


@pytest.mark.parametrize("opts, message", [
    (["MODEL.FEATURE_GENERATOR.ENABLED", False], "SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED = True needs G"),
    (["SOLVER.CAGNET_SCHEDULE.MIXED.STEPS", [5, 3]], "SOLVER.CAGNET_SCHEDULE.MIXED.STEPS = [5, 3]: must be strictly increasing"),
    (["SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 12], "the mixed phase would never run"),
    (["SOLVER.CAGNET_SCHEDULE.MIXED.OPTIMIZER", "LAMB"], "SOLVER.CAGNET_SCHEDULE.MIXED.OPTIMIZER = 'LAMB': must be one of"),
])
def test_bad_mixed_phase_configs_are_named(opts, message):
    cfg = tiny_cfg(None, *MIXED, *opts)
    with pytest.raises(ConfigValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(cfg)


def test_reference_config_is_the_reference_recipe():
    cfg = load_cpu_config(os.path.join(REPO, "configs", "synthetic_scenes", "cagnet-reference_tiny_synthetic_scenes.yaml"))
    validate_config(cfg)
    m, c = cfg.SOLVER.CAGNET_SCHEDULE.MIXED, cfg.MODEL.CAGNET
    assert m.ENABLED and (m.CLS_WEIGHT, m.FAKE_CLS_WEIGHT, m.FINETUNE_CLS_WEIGHT, m.FINETUNE_ADV_WEIGHT) == (0.75, 0.25, 0.125, 0.0)
    assert (c.ADV_LOSS, c.FINETUNE_UNSEEN_CLASS_WEIGHT) == ("l1", 10.0)
    assert c.DETACH_LATENT and c.FINETUNE_DETACH_GENERATED and c.FAKE_CLS_WEIGHT == 0 and c.PRIOR_MMD_WEIGHT == 0
    # The two reference choices that need bounded features are left out here (see the config).
    assert c.REC_LOSS == "l2" and not cfg.MODEL.CONTEXTUAL_MODULE.SIGMOID_OUTPUT
    assert not cfg.MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT
    # The LR steps at 1/2, 2/3 and 5/6 of the mixed phase, as 3k, 4k, 5k of the reference's 6k.
    length = cfg.SOLVER.MAX_ITER - cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS
    assert [round(s / length * 6000) for s in m.STEPS] == [3000, 4001, 4999]
    assert math.isclose(m.BASE_LR / cfg.SOLVER.BASE_LR, 0.2) and math.isclose(m.D_BASE_LR / cfg.SOLVER.D_BASE_LR, 0.2)


REFERENCE_PAPER_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*", "cagnet-reference_R101_*.yaml")))
# dataset -> (mixed iterations, BASE_LR, STEPS, GAMMA, unseen class weight, finetuning CE weight), from the
# reference's configs/<dataset>_finetune.yaml (lr_transfer, dis_scheduler, gen_unseen_rate + 1, lambdas)
REFERENCE_MIXED_RUNS = {
    "voc20": (6000, 5e-5, [3000, 4000, 5000], 0.1, 10.0, 0.125),
    "context33": (10000, 5e-5, [5000, 6000, 7000, 8000, 9000], 0.3, 15.0, 0.125),
    "cocostuff171": (6000, 1e-5, [3000, 5000], 0.3, 60.0, 1.0),
}


def test_every_paper_dataset_has_a_reference_config():
    assert sorted(os.path.basename(p).rsplit("_", 1)[1][:-5] for p in REFERENCE_PAPER_CONFIGS) == sorted(REFERENCE_MIXED_RUNS)


@pytest.mark.parametrize("path", REFERENCE_PAPER_CONFIGS, ids=os.path.basename)
def test_reference_paper_config_runs_a_mixed_training_and_finetuning_step(path):
    """The reference numbers as the config spells them; then one training and one finetuning step
    of the mixed phase on the full model (64 px input): E and CM untouched, C moves."""
    from cagnet.data.random_batch import random_training_batch
    from cagnet.engine import FINETUNING, TRAINING, AlternatingStepTrainer
    from cagnet.engine.mixed_phase import build_mixed_phase
    from cagnet.engine.trainer import _make_optimizer, _param_groups
    from detectron2.utils.events import EventStorage

    cfg = load_cpu_config(path)
    validate_config(cfg)
    length, lr, steps, gamma, unseen_weight, finetune_cls = REFERENCE_MIXED_RUNS[os.path.basename(path).rsplit("_", 1)[1][:-5]]
    m = cfg.SOLVER.CAGNET_SCHEDULE.MIXED
    assert m.ENABLED and cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS == 40000
    assert cfg.SOLVER.MAX_ITER - 40000 == length and (m.BASE_LR, m.D_BASE_LR) == (lr, lr)
    assert list(m.STEPS) == steps and m.GAMMA == gamma and (m.CLS_WEIGHT, m.FAKE_CLS_WEIGHT) == (0.75, 0.25)
    assert (m.FINETUNE_CLS_WEIGHT, m.FINETUNE_ADV_WEIGHT) == (finetune_cls, 0.0)
    c = cfg.MODEL.CAGNET
    assert (c.REC_LOSS, c.REC_WEIGHT, c.ADV_LOSS, c.FINETUNE_UNSEEN_CLASS_WEIGHT) == ("mmd", 50.0, "l1", unseen_weight)
    assert c.FINETUNE_DETACH_GENERATED == (finetune_cls == 0.125)  # COCO-stuff trains G with C's loss there
    cfg.SOLVER.IMS_PER_BATCH = 1
    torch.manual_seed(0)
    model = CaGNetTrainer.build_model(cfg)
    model.finetune_pixels = 64
    batch = random_training_batch(1, 64, 64, model.seen_ids.tolist())
    step = AlternatingStepTrainer.from_config(cfg, model, CaGNetTrainer.build_optimizers(cfg, model),
                                              lambda seed, start: iter(lambda: batch, None),
                                              build_mixed_phase(cfg, model, _make_optimizer, _param_groups))
    frozen = {k: v.clone() for k, v in {**model.backbone.state_dict(), **{"cm." + k: v for k, v in model.contextual_module.state_dict().items()}}.items()}
    for phase in (TRAINING, FINETUNING):
        step.iter = next(i for i in range(40000, 50000) if step.phases.phase(i) == phase)
        assert step.in_mixed_phase()
        before = model.heads.classifier.weight.detach().clone()
        with EventStorage(step.iter) as storage:
            step.storage = storage
            step.run_step()
        assert not torch.equal(before, model.heads.classifier.weight)
    now = {**model.backbone.state_dict(), **{"cm." + k: v for k, v in model.contextual_module.state_dict().items()}}
    assert all(torch.equal(v, frozen[k]) for k, v in now.items())


def test_default_finetune_pixels_are_each_workers_share_of_a_batch(tiny_scenes, monkeypatch):
    """FINETUNE_PIXELS 0: IMS_PER_BATCH / workers x feature pixels of a crop, so that N workers
    together generate as many pixels as one training batch holds."""
    from detectron2.modeling import build_model
    from detectron2.utils import comm

    opts = ["MODEL.CAGNET.FINETUNE_PIXELS", 0, "INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute",
            "INPUT.CROP.SIZE", [40, 48], "SOLVER.IMS_PER_BATCH", 8]
    one = build_model(tiny_cfg(None, *opts)).finetune_pixels
    assert one == 8 * 10 * 12  # output stride 4
    monkeypatch.setattr(comm, "get_world_size", lambda: 4)
    assert build_model(tiny_cfg(None, *opts)).finetune_pixels == one // 4


def test_two_phase_config_is_the_reference_schedule_on_the_built_in_losses():
    """cagnet-two-phase = cagnet-reference with the built-in config's model and first-phase losses
    back (the runs of docs/experiments/2026-12-06_reference-recipe.md used these overrides)."""
    folder = os.path.join(REPO, "configs", "synthetic_scenes")
    two_phase = load_cpu_config(os.path.join(folder, "cagnet-two-phase_tiny_synthetic_scenes.yaml"))
    reference = load_cpu_config(os.path.join(folder, "cagnet-reference_tiny_synthetic_scenes.yaml"))
    reference.merge_from_list(["MODEL.CAGNET.PRIOR_MMD_WEIGHT", 1000.0, "MODEL.CAGNET.FAKE_CLS_WEIGHT", 0.25,
                               "MODEL.CAGNET.ADV_LOSS", "lsgan", "MODEL.CAGNET.DETACH_LATENT", False,
                               "MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT", True,
                               "OUTPUT_DIR", two_phase.OUTPUT_DIR])
    assert yaml.safe_load(two_phase.dump()) == yaml.safe_load(reference.dump())
    built_in = load_cpu_config(os.path.join(folder, "cagnet_tiny_synthetic_scenes.yaml"))
    assert two_phase.MODEL.CAGNET.PRIOR_MMD_WEIGHT == built_in.MODEL.CAGNET.PRIOR_MMD_WEIGHT > 0
    assert two_phase.SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED and not built_in.SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED
