# Copyright (c) CaGNet-D2 contributors.
"""The reference code's second run as a phase of one run (``SOLVER.CAGNET_SCHEDULE.MIXED``).

The authors train CaGNet in two runs of their train.py: a step1-only run that trains everything,
then, from its model, a "mixed" run that alternates training and finetuning steps with E and CM
frozen, its own Adam optimisers for D+C and G, its own learning rates and loss weights. Here the
first run is the phase ``iteration < SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS`` and the second the rest:

* E (ResNet and ASPP) and CM are in neither of the phase's optimisers and run without gradient,
  so their parameters and buffers stay bit-identical; the first phase's optimiser state is dropped
  when the phase starts (a resumed run drops it at the same iteration);
* G + C and D get new optimisers (``SOLVER.CAGNET_SCHEDULE.MIXED.OPTIMIZER``) with their own learning rates
  and step schedule counted from the phase's start;
* the training and finetuning steps use the phase's loss weights (:class:`PhaseLossWeights`).
"""
from dataclasses import dataclass
from typing import List

import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.projects.deeplab.build_solver import build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier

from ..modeling.meta_arch import PhaseLossWeights

__all__ = ["MixedPhase", "build_mixed_phase", "first_phase_lr_scheduler"]


@dataclass
class MixedPhase:
    start: int  # first iteration of the phase
    optimizer: torch.optim.Optimizer  # G and C (with the conv C shares with D)
    optimizer_d: torch.optim.Optimizer  # D (with the shared conv)
    scheduler: LRMultiplier
    scheduler_d: LRMultiplier
    weights: PhaseLossWeights

    def active(self, iteration: int) -> bool:
        return iteration >= self.start


def _steps_within(steps, length: int) -> List[int]:
    # fvcore wants milestones inside the schedule; a step at or past the end never acts anyway.
    return [s for s in steps if 0 < s < length]


def _step_scheduler(optimizer, steps, gamma: float, length: int) -> LRMultiplier:
    length = max(1, length)
    milestones = _steps_within(steps, length)
    values = [gamma ** k for k in range(len(milestones) + 1)]
    return LRMultiplier(optimizer, MultiStepParamScheduler(values, milestones=milestones, num_updates=length),
                        max_iter=length)


def build_mixed_phase(cfg, model, make_optimizer, param_groups) -> MixedPhase:
    """The phase's optimisers, LR schedules and loss weights for ``model`` (a CaGNet).

    ``make_optimizer(cfg, kind, groups, lr)`` and ``param_groups(parts, lr, weight_decay)`` are the
    trainer's own builders, so both phases make optimisers the same way."""
    m, wd = cfg.SOLVER.CAGNET_SCHEDULE.MIXED, cfg.SOLVER.WEIGHT_DECAY
    heads = model.heads
    g_and_c = list(model.generator.parameters()) + list(heads.shared.parameters()) + list(heads.classifier.parameters())
    d = list(heads.shared.parameters()) + list(heads.discriminator.parameters())
    optimizer = make_optimizer(cfg, m.OPTIMIZER, param_groups([(g_and_c, 1.0)], m.BASE_LR, wd), m.BASE_LR)
    optimizer_d = make_optimizer(cfg, m.OPTIMIZER, param_groups([(d, 1.0)], m.D_BASE_LR, wd), m.D_BASE_LR)
    start = cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS
    length = cfg.SOLVER.MAX_ITER - start
    return MixedPhase(
        start=start,
        optimizer=optimizer,
        optimizer_d=optimizer_d,
        scheduler=_step_scheduler(optimizer, m.STEPS, m.GAMMA, length),
        scheduler_d=_step_scheduler(optimizer_d, m.STEPS, m.GAMMA, length),
        weights=PhaseLossWeights(cls=m.CLS_WEIGHT, fake_cls=m.FAKE_CLS_WEIGHT,
                                 finetune_cls=m.FINETUNE_CLS_WEIGHT, finetune_adv=m.FINETUNE_ADV_WEIGHT),
    )


def first_phase_lr_scheduler(cfg, optimizer):
    """SOLVER.LR_SCHEDULER_NAME over the first phase: over SOLVER.MAX_ITER, or with
    SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED over TRAINING_ONLY_ITERS (the reference's step1 run ends its poly
    schedule there)."""
    if not cfg.SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED:
        return build_lr_scheduler(cfg, optimizer)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = max(1, cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS)
    return build_lr_scheduler(cfg, optimizer)
