# Copyright (c) CaGNet-D2 contributors.
"""A training run that dies at a chosen iteration, as a kill would stop it (resume tests)."""
from detectron2.engine import HookBase


class CrashAt(HookBase):
    """Raises after iteration ``at`` has run (its checkpoint, if any, is written first)."""

    def __init__(self, at: int):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError("simulated crash")


def train_until_crash(trainer, crash_at=None):
    """``trainer.train()``; with ``crash_at``, stops there with the simulated crash (any other
    error propagates). Returns the trainer."""
    if crash_at is not None:
        trainer.register_hooks([CrashAt(crash_at)])
    try:
        trainer.train()
    except RuntimeError as e:
        if "simulated crash" not in str(e):
            raise
    return trainer
