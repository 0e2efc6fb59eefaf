# Copyright (c) CaGNet-D2 contributors.
"""A run stopped mid-way and resumed equals an uninterrupted run: weights, both optimisers,
both LR schedules, the phase position and the data order."""
import os

import pytest
import torch

from detectron2.engine import HookBase

from cagnet.engine import CaGNetTrainer

from conftest import tiny_cfg

OPTS = ["SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 4, "TEST.EVAL_PERIOD", 0, "SEED", 3]


class _Crash(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError("simulated crash")


def _run(output_dir, crash_at=None, resume=False):
    torch.manual_seed(123 if not resume else 456)  # a resumed run must not depend on its own init
    cfg = tiny_cfg(output_dir, *OPTS)
    trainer = CaGNetTrainer(cfg)
    trainer.test = lambda *a, **k: {}  # evaluation is not what this test is about
    if crash_at is not None:
        trainer.register_hooks([_Crash(crash_at)])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except RuntimeError as e:
        assert "simulated crash" in str(e)
    return trainer


def _assert_same_state(a, b):
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_same_state(value, b[key])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        elif isinstance(value, (list, tuple)):
            assert len(value) == len(b[key])
            for x, y in zip(value, b[key]):
                _assert_same_state({"_": x}, {"_": y}) if isinstance(x, (dict, torch.Tensor)) else None
        else:
            assert value == b[key], key


def test_resume_continues_exactly(tiny_scenes, tmp_path):
    full = _run(tmp_path / "full")
    crashed = _run(tmp_path / "stopped", crash_at=6)
    # The last checkpoint before the crash is at iteration 3 (period 4); the crash hit a finetuning
    # block, so the resumed run restarts in the middle of the phase schedule.
    assert (tmp_path / "stopped" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert crashed.iter == 6 and not (tmp_path / "stopped" / "model_final.pth").exists()
    resumed = _run(tmp_path / "stopped", resume=True)
    assert resumed.start_iter == 4 and resumed.iter == full.iter == 10
    sd_full, sd_resumed = full.model.state_dict(), resumed.model.state_dict()
    for k in sd_full:
        assert torch.equal(sd_full[k], sd_resumed[k]), k
    _assert_same_state(full.optimizer.state_dict(), resumed.optimizer.state_dict())
    _assert_same_state(full.optimizer_d.state_dict(), resumed.optimizer_d.state_dict())
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert full.scheduler_d.state_dict() == resumed.scheduler_d.state_dict()
    assert [g["lr"] for g in full.optimizer.param_groups] == [g["lr"] for g in resumed.optimizer.param_groups]


def test_checkpoint_holds_both_optimizers_and_schedulers(tiny_scenes, tmp_path):
    _run(tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)
    trainer_state = ckpt["trainer"]
    assert trainer_state["iteration"] == 9
    assert {"optimizer", "optimizer_d", "seed"} <= set(trainer_state["_trainer"])
    assert set(trainer_state["hooks"]["LRSchedulers"]) == {"lr", "lr_d"}
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith(".tmp")]
