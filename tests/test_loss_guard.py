# Copyright (c) CaGNet-D2 contributors.
"""The loss guard: a non-finite loss or gradient stops CaGNet's and the staged trainer's runs
before the optimiser step, naming the loss term, the iteration and the last good checkpoint
(left intact); a loss that grows by orders of magnitude is warned about."""
import math
import re

import pytest
import torch

from detectron2.engine import HookBase

from cagnet.engine import CaGNetTrainer, ZeroShotStagedTrainer
from cagnet.engine.loss_guard import LossGuard, NonFiniteLossError

from _tool_helpers import LogRecords, single_thread  # noqa: F401
from conftest import tiny_cfg
from test_methods_e2e import method_cfg

OPTS = ["SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 4, "TEST.EVAL_PERIOD", 0, "SEED", 3]


def _poison(model, method, at_iteration, term, trainer):
    """Make ``model.<method>`` return ``term`` = inf from ``at_iteration`` on."""
    original = getattr(model, method)

    def poisoned(*args, **kwargs):
        losses = original(*args, **kwargs)
        if trainer.iter >= at_iteration:
            losses[term] = losses[term] * float("inf")
        return losses

    setattr(model, method, poisoned)


def _snapshot(directory):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.iterdir() if p.is_file()
            and (p.suffix == ".pth" or p.name == "last_checkpoint")}


def test_non_finite_loss_stops_cagnet_before_the_step_and_keeps_the_last_checkpoint(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, *OPTS))
    trainer.test = lambda *a, **k: {}
    trainer.resume_or_load(resume=False)
    _poison(trainer.model, "training_losses", 6, "loss_rec", trainer._trainer)  # iteration 6: a training step
    before = {}

    class Remember(HookBase):  # the checkpoints as they are just before the bad iteration
        def before_step(self):
            if self.trainer.iter == 6:
                before.update(_snapshot(tmp_path))

    trainer.register_hooks([Remember()])
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    message = str(e.value)
    assert "Non-finite loss at iteration 6 (training step): loss_rec = inf (the other terms: loss_cls = " in message
    assert f"The last good checkpoint is {tmp_path / 'model_0000003.pth'}, unchanged" in message
    assert set(before) == {"model_0000003.pth", "last_checkpoint"} and _snapshot(tmp_path) == before
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


def test_non_finite_loss_at_the_last_iteration_writes_no_final_checkpoint(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, *OPTS))
    trainer.test = lambda *a, **k: {"never": "evaluated"}
    trainer.resume_or_load(resume=False)
    _poison(trainer.model, "finetuning_losses", 9, "loss_cls_generated", trainer._trainer)  # 9: finetuning
    with pytest.raises(NonFiniteLossError, match="at iteration 9 \\(finetuning step\\): loss_cls_generated = inf"):
        trainer.train()
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000007.pth"
    assert getattr(trainer, "_last_eval_results", None) is None


def test_non_finite_gradient_with_finite_losses_names_the_parameter(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, *OPTS, "MODEL.WEIGHTS", ""))
    trainer.resume_or_load(resume=False)
    weight = trainer.model.generator.mlp[0].weight
    weight.register_hook(lambda g: g * float("nan") if trainer._trainer.iter >= 1 else g)
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    assert ("Non-finite gradients at iteration 1 (training step) of 1 parameters (generator.mlp.0.weight), "
            "with finite losses") in str(e.value)
    assert "No checkpoint of this run was saved yet (it started from random initialisation)" in str(e.value)


def test_non_finite_loss_stops_the_staged_trainer(tiny_scenes, tmp_path):
    cfg = method_cfg("zs3net", tmp_path, "SOLVER.MAX_ITER", 6, "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 2,
                     "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 2, "SOLVER.CHECKPOINT_PERIOD", 2, "TEST.EVAL_PERIOD", 0)
    trainer = ZeroShotStagedTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    original = model.forward

    def poisoned(batched_inputs, stage=None, **kwargs):
        out = original(batched_inputs, stage=stage, **kwargs)
        if stage == "generator":
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="at iteration 2 \\(generator stage\\): loss_mmd = nan") as e:
        trainer.train()
    assert f"The last good checkpoint is {tmp_path / 'model_0000001.pth'}, unchanged" in str(e.value)
    assert not (tmp_path / "model_final.pth").exists()


def _train_collecting_warnings(cfg):
    torch.manual_seed(0)
    trainer = CaGNetTrainer(cfg)
    trainer.test = lambda *a, **k: {}
    trainer.resume_or_load(resume=False)
    with LogRecords() as log:
        try:
            trainer.train()
            stopped = None
        except NonFiniteLossError as e:
            stopped = str(e)
    return [r.getMessage() for r in log.records if "training may be diverging" in r.getMessage()], stopped


@pytest.mark.parametrize("lr", [1.0, 10.0])
def test_a_diverging_run_is_warned_about_or_stopped(tiny_scenes, tmp_path, lr):
    # The user's slip of the issue: BASE_LR 10 (and 1) instead of 1e-3. The losses reach 1e20 and
    # more from iteration 1 on: a warning while they are finite, a stop when they are not.
    warnings, stopped = _train_collecting_warnings(tiny_cfg(tmp_path, *OPTS, "SOLVER.BASE_LR", lr, "SOLVER.MAX_ITER", 3))
    assert warnings or stopped
    if warnings:
        assert any(" (training step) is " in w and " at iteration 1, " in w for w in warnings), warnings
    if stopped:
        assert re.search(r"Non-finite loss at iteration \d \((training|finetuning) step(, D's update)?\): loss_", stopped), stopped


def test_growth_warning_once_per_factor_and_not_for_terms_that_start_near_zero():
    guard = LossGuard(growth_factor=100.0, reference_iters=5)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    optimizer = torch.optim.SGD([p], lr=0.1)

    def step(it, ce, kl):
        guard.check("training step", it, {"loss_cls": torch.tensor(ce), "loss_kl": torch.tensor(kl)}, optimizer)

    with LogRecords() as log:
        for it in range(5):
            step(it, 3.0 + 0.01 * it, 0.0)  # KL starts at 0: its reference is floored at 1e-3 of the total (3.02)
        step(5, 3.0, 0.2)  # KL from 0 to 0.2: below 100 x the floor (0.3)
        assert log.text() == ""
        step(6, 350.0, 0.2)
        step(7, 2000.0, 0.2)  # 660x, but within the next factor: warned once
        step(8, 4e4, 0.5)
    warnings = [r.getMessage() for r in log.records]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("Loss loss_cls (training step) is 350 at iteration 6, 116 times its median 3.02 "
                                  "over the run's first such steps")
    assert "loss_kl (training step) is 0.5 at iteration 8" in warnings[1] + warnings[2]
    assert "loss_cls (training step) is 4e+04 at iteration 8" in warnings[1] + warnings[2]
    with pytest.raises(NonFiniteLossError):
        step(9, math.nan, 0.1)


def test_huge_finite_gradients_do_not_stop_the_run():
    # Their 2-norm overflows to inf in float32; the gradients themselves are finite.
    guard = LossGuard(growth_factor=0)
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 1e30)
    optimizer = torch.optim.SGD([p], lr=0.1)
    assert not math.isfinite(torch.nn.utils.get_total_norm([p.grad]).item())
    guard.check("training step", 0, {"loss_cls": torch.tensor(1.0)}, optimizer)
    p.grad[2] = math.inf
    with pytest.raises(NonFiniteLossError, match="Non-finite gradients at iteration 1 \\(training step\\) of 1 param"):
        guard.check("training step", 1, {"loss_cls": torch.tensor(1.0)}, optimizer)
