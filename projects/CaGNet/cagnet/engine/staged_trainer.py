# Copyright (c) CaGNet-D2 contributors.
"""The trainer of the baselines (SPNet, SPNet-c, ZS3Net, ZS3Net+ST): consecutive stages.

A model declares its stages (``STAGES``) and, per stage, the modules it trains
(``stage_modules(stage)``, keyed by LR-multiplier name); its training ``forward(batch, stage=...)``
returns that stage's losses. The :class:`StageSchedule` maps an iteration to its stage (a pure
function of the iteration, so ``--resume`` restores the position), each stage has its own
optimiser and LR schedule over its own iterations, and every iteration reads one batch of the
training stream (the resumable loader of CaGNet, started at the iteration). Checkpoints hold the
optimisers of all stages, the LR schedules, the float16 grad scaler (``SOLVER.AMP``) and the run seed.

Stage lengths: ``segmentation`` runs SOLVER.MAX_ITER minus the other stages' iterations
(SOLVER.ZS3NET_STAGES.<STAGE>_ITERS); the other stages follow in the model's order.

Calibration (SPNet-c, ``MODEL.CALIBRATION.METHOD "held_out_classes"``): before training, the same
kind of network is trained (under OUTPUT_DIR/calibration, resumable) with some seen classes held
out as pseudo-unseen, and gamma is chosen to maximise its hIoU between the remaining seen classes
and the held-out ones on training images (:func:`cagnet.evaluation.select_calibration`). No unseen
label is used; the model keeps gamma in its ``calibration`` buffer (saved in checkpoints).
"""
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.projects.deeplab.build_solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..config_validation import validate_config
from ..data.build import build_resumable_train_loader
from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper, seen_label_lut, training_label_lut
from .checkpoint import AtomicCheckpointer
from .calibration import CalibrationMixin, held_out_class_ids  # noqa: F401  (held_out_class_ids: API)
from .loss_guard import LossGuard
from .output_dir import check_output_dir
from .precision import MixedPrecision, Precision, log_precision, precision_from_config
from .self_training import SelfTrainingMixin
from .trainer import (
    CaGNetTrainer,
    LRSchedulers,
    _make_optimizer,
    _param_groups,
    connect_loss_guard,
    create_ddp,
    standard_hooks,
    test_with_tta,
)

__all__ = ["StageSchedule", "StagedStepTrainer", "StageLRSchedulers", "ZeroShotStagedTrainer", "held_out_class_ids"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSchedule:
    stages: Tuple[Tuple[str, int], ...]  # (name, iterations), in order

    def __post_init__(self):
        if any(n < 0 for _, n in self.stages):
            raise ValueError(f"Stage lengths must be >= 0, got {dict(self.stages)}")

    @classmethod
    def from_config(cls, cfg, stage_names: Sequence[str]) -> "StageSchedule":
        """``segmentation`` (first) gets SOLVER.MAX_ITER minus the others' SOLVER.ZS3NET_STAGES.<NAME>_ITERS."""
        others = {name: int(cfg.SOLVER.ZS3NET_STAGES.get(f"{name.upper()}_ITERS")) for name in stage_names[1:]}
        first = cfg.SOLVER.MAX_ITER - sum(others.values())
        if first < 0:
            raise ValueError(
                f"SOLVER.MAX_ITER={cfg.SOLVER.MAX_ITER} is shorter than the stages after "
                f"{stage_names[0]!r} ({others}); SOLVER.MAX_ITER is the total of all stages"
            )
        return cls(((stage_names[0], first), *others.items()))

    @property
    def total(self) -> int:
        return sum(n for _, n in self.stages)

    def stage(self, iteration: int) -> Tuple[str, int]:
        """(stage name, iteration within the stage)."""
        start = 0
        for name, n in self.stages:
            if iteration < start + n:
                return name, iteration - start
            start += n
        raise IndexError(f"Iteration {iteration} is past the last stage ({self.total} iterations)")


class StagedStepTrainer(SimpleTrainer):
    """Runs one step of the current stage with that stage's optimiser."""

    def __init__(self, model, ddp_model, optimizers: Dict[str, torch.optim.Optimizer], schedule: StageSchedule,
                 seed: int, data_loader_factory, steps_per_batch: Optional[Dict[str, int]] = None,
                 loss_guard: Optional[LossGuard] = None, precision: Optional[Precision] = None):
        """``steps_per_batch``: optimiser steps a stage makes on each batch (default 1); the model
        gets ``reuse_features=True`` for the repeats (E is frozen in such stages). ``precision``:
        autocast and loss scaling of every step (default float32)."""
        first = next(name for name, n in schedule.stages if n > 0) if schedule.total else schedule.stages[0][0]
        super().__init__(model, data_loader=None, optimizer=optimizers[first])
        self.ddp_model = ddp_model
        self.optimizers = optimizers
        self.schedule = schedule
        self.seed = seed
        self._data_loader_factory = data_loader_factory
        self.steps_per_batch = dict(steps_per_batch or {})
        self.loss_guard = loss_guard or LossGuard()
        self.mixed_precision = MixedPrecision(precision or Precision(model.device.type, None, False, "float32"))

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self.data_loader = self._data_loader_factory(self.seed, self.iter)
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def run_step(self):
        assert self.model.training, "[StagedStepTrainer] model was changed to eval mode!"
        stage, _ = self.schedule.stage(self.iter)
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        # Per-iteration RNG (noise, dropout, subsets), seeded after the data is read: a resumed
        # run draws what the uninterrupted run would have drawn.
        torch.manual_seed((self.seed * 1_000_003 + self.iter * 7_919 + comm.get_rank()) % (2**63))
        self.optimizer = self.optimizers[stage]
        mp = self.mixed_precision
        for repeat in range(max(1, self.steps_per_batch.get(stage, 1))):
            kwargs = {"reuse_features": True} if repeat else {}
            with mp.autocast():
                losses = self.ddp_model(data, stage=stage, **kwargs)
            self.optimizer.zero_grad(set_to_none=True)
            mp.backward(sum(losses.values()))
            self.loss_guard.check(f"{stage} stage", self.iter, losses, mp.checked(self.optimizer))
            mp.step(self.optimizer)
            mp.update()
        self._write_metrics(losses, data_time)
        if mp.scaler is not None and comm.is_main_process():
            get_event_storage().put_scalar("[metric]grad_scaler", mp.scale(), smoothing_hint=False)

    def state_dict(self):
        ret = TrainerBase.state_dict(self)  # iteration
        ret.update(optimizers={k: o.state_dict() for k, o in self.optimizers.items()}, seed=self.seed,
                   **self.mixed_precision.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        for k, o in self.optimizers.items():
            o.load_state_dict(state_dict["optimizers"][k])
        self.mixed_precision.load_state_dict(state_dict)
        self.seed = state_dict["seed"]
        self._data_loader_iter_obj = None


class StageLRSchedulers(LRSchedulers):
    """Steps the LR schedule of the stage that just ran (each over its stage's iterations) and
    logs its LR; all schedules are checkpointed (``LRSchedulers``)."""

    def __init__(self, schedule: StageSchedule, schedulers: Dict[str, tuple]):
        super().__init__(schedulers)  # stage -> (optimizer, scheduler)
        self._schedule = schedule

    def after_step(self):
        stage, _ = self._schedule.stage(self.trainer.iter)
        optimizer, scheduler = self._schedules[stage]
        group = max(optimizer.param_groups, key=lambda g: len(g["params"]))
        get_event_storage().put_scalar("lr", group["lr"], smoothing_hint=False)
        scheduler.step()


class ZeroShotStagedTrainer(CalibrationMixin, SelfTrainingMixin, DefaultTrainer):
    def __init__(self, cfg, classes: Optional[Dict] = None):
        """``classes`` overrides the dataset's class split (the calibration network uses it)."""
        validate_config(cfg)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg, **({"classes": classes} if classes else {}))
        model.to(torch.device(cfg.MODEL.DEVICE))
        logger.info(f"Model:\n{model}")
        schedule = StageSchedule.from_config(cfg, model.STAGES)
        optimizers = {name: self.build_stage_optimizer(cfg, model, name) for name, _ in schedule.stages}
        # Training labels: unseen classes of the model (those of the dataset, plus the held-out
        # ones of a calibration network) -> ignore.
        metas = [MetadataCatalog.get(n) for n in cfg.DATASETS.TRAIN]
        lut = seen_label_lut(model.unseen_ids.tolist(), model.ignore_value)[training_label_lut(metas)]
        mapper = ZeroShotSemSegDatasetMapper(**{**ZeroShotSemSegDatasetMapper.from_config(cfg, is_train=True), "label_lut": lut})

        def data_loader_factory(seed, start_batch):
            return build_resumable_train_loader(cfg, mapper, seed=seed, start_batch=start_batch, records=records)

        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        steps = {"generator": cfg.SOLVER.ZS3NET_STAGES.GENERATOR_STEPS_PER_BATCH}
        precision = precision_from_config(cfg, model.device)
        log_precision(precision, cfg.SOLVER.AMP.ENABLED)
        self._trainer = StagedStepTrainer(model, create_ddp(model), optimizers, schedule, seed, data_loader_factory, steps,
                                          loss_guard=LossGuard.from_config(cfg, model), precision=precision)
        self.schedule = schedule
        self.schedulers = {name: build_lr_scheduler(_stage_cfg(cfg, n), optimizers[name]) for name, n in schedule.stages}
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = schedule.total
        self.cfg = cfg
        connect_loss_guard(self)
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ building blocks
    @classmethod
    def build_stage_optimizer(cls, cfg, model, stage: str):
        """Adam (SOLVER.ZS3NET_STAGES.GENERATOR_LR) for a generator; SOLVER.OPTIMIZER otherwise, with
        BASE_LR (segmentation) or SOLVER.ZS3NET_STAGES.CLASSIFIER_LR (classifier); LR multipliers
        by module (SOLVER.LR_MULTIPLIERS)."""
        s = cfg.SOLVER
        modules = model.stage_modules(stage)
        if stage == "generator":
            kind, lr, wd = "ADAM", s.ZS3NET_STAGES.GENERATOR_LR, 0.0
        else:
            kind, lr, wd = s.OPTIMIZER, (s.BASE_LR if stage == "segmentation" else s.ZS3NET_STAGES.CLASSIFIER_LR), s.WEIGHT_DECAY
        groups = _param_groups([(list(m.parameters()), s.LR_MULTIPLIERS.get(k)) for k, m in modules.items()], lr, wd)
        return _make_optimizer(cfg, kind, groups, lr)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return CaGNetTrainer.build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return CaGNetTrainer.build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        return test_with_tta(cls, cfg, model)

    def build_hooks(self):
        return standard_hooks(
            self, StageLRSchedulers(self.schedule, {k: (self._trainer.optimizers[k], s) for k, s in self.schedulers.items()})
        )

    def resume_or_load(self, resume=True):
        check_output_dir(self.cfg, resume, clear=True)
        resumed = resume and self.checkpointer.has_checkpoint()
        if not resumed and not self.cfg.MODEL.WEIGHTS and self.cfg.MODEL.CAGNET.EXPECT_PRETRAINED_BACKBONE:
            logger.warning("MODEL.WEIGHTS is empty: the backbone starts from RANDOM initialisation")
        super().resume_or_load(resume=resume)
        self.start_self_training(resumed)

def _stage_cfg(cfg, iters: int):
    """The config a stage's LR schedule is built from: its own length."""
    c = cfg.clone()
    c.defrost()
    c.SOLVER.MAX_ITER = max(int(iters), 1)
    c.SOLVER.WARMUP_ITERS = min(c.SOLVER.WARMUP_ITERS, max(int(iters), 1))
    return c
