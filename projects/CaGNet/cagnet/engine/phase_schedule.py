# Copyright (c) CaGNet-D2 contributors.
"""Which step an iteration runs: training steps only for a while, then alternating blocks.

The phase is a pure function of the iteration, so restoring the iteration on ``--resume``
restores the position in the schedule.
"""
from dataclasses import dataclass

__all__ = ["PhaseSchedule", "TRAINING", "FINETUNING"]

TRAINING = "training"
FINETUNING = "finetuning"


@dataclass(frozen=True)
class PhaseSchedule:
    training_only_iters: int = 0
    training_block: int = 100
    finetuning_block: int = 100

    def __post_init__(self):
        if self.training_only_iters < 0 or self.training_block < 0 or self.finetuning_block < 0:
            raise ValueError(f"Phase lengths must be >= 0, got {self}")
        if self.training_block == 0 and self.finetuning_block == 0:
            raise ValueError("SOLVER.CAGNET_SCHEDULE: TRAINING_BLOCK and FINETUNING_BLOCK cannot both be 0")

    @classmethod
    def from_config(cls, cfg) -> "PhaseSchedule":
        p = cfg.SOLVER.CAGNET_SCHEDULE
        if not cfg.MODEL.FEATURE_GENERATOR.ENABLED:  # nothing generates features to finetune on
            return cls(p.TRAINING_ONLY_ITERS, max(p.TRAINING_BLOCK, 1), 0)
        return cls(p.TRAINING_ONLY_ITERS, p.TRAINING_BLOCK, p.FINETUNING_BLOCK)

    @property
    def _period(self) -> int:
        return self.training_block + self.finetuning_block

    def phase(self, iteration: int) -> str:
        if iteration < self.training_only_iters or self.finetuning_block == 0:
            return TRAINING
        return TRAINING if (iteration - self.training_only_iters) % self._period < self.training_block else FINETUNING

    def num_training_steps(self, iteration: int) -> int:
        """How many of the iterations ``0 .. iteration-1`` are training steps."""
        if self.finetuning_block == 0 or iteration <= self.training_only_iters:
            return iteration
        rest = iteration - self.training_only_iters
        full, partial = divmod(rest, self._period)
        return self.training_only_iters + full * self.training_block + min(partial, self.training_block)
