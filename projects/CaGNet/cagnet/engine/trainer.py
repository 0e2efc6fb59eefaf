# Copyright (c) CaGNet-D2 contributors.
"""CaGNetTrainer: detectron2's DefaultTrainer with CaGNet's two steps and two optimisers.

* Training step (real images, seen labels): E, CM, G forward once; D's optimiser steps on D's loss
  (real -> 1, generated -> 0, inputs detached); then the other optimiser steps E, CM, G, C on
  L_CLS + L_ADV + lambda1 L_REC + lambda2 L_KL.
* Finetuning step (no images): G generates features for random seen/unseen labels; the other
  optimiser steps G and C. E and CM get no gradient and are not touched.
* With ``SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED`` (the reference code's second run, mixed_phase.py), from
  ``TRAINING_ONLY_ITERS`` on both steps run with E and CM frozen, two new optimisers (G + C, D)
  and the phase's own loss weights.

Both optimisers and both LR schedulers, the float16 grad scaler (``SOLVER.AMP``, see
``precision.py``), the iteration (hence the phase) and the run seed are in every checkpoint, so
``--resume`` continues the run exactly. Before each optimiser step the LossGuard (loss_guard.py)
stops the run at a non-finite loss or gradient. In distributed training the modules
are wrapped in two DistributedDataParallel instances over disjoint parameters, E+CM+G and D+C,
because each step runs one forward and one backward through each wrapper it uses.
"""
import contextlib
import logging
import os
import time
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import MetadataCatalog, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..config_validation import validate_config
from ..data.build import build_resumable_train_loader
from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper, seen_label_lut, training_label_lut
from ..data.register import EVALUATOR_TYPE
from ..evaluation import ZeroShotSemSegEvaluator
from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA
from .calibration import CalibrationMixin
from .checkpoint import AtomicCheckpointer
from .loss_guard import LossGuard
from .mixed_phase import MixedPhase, build_mixed_phase, first_phase_lr_scheduler
from .output_dir import check_output_dir
from .phase_schedule import FINETUNING, TRAINING, PhaseSchedule
from .preemption import PreemptionHook
from .precision import MixedPrecision, Precision, log_precision, precision_from_config

__all__ = ["CaGNetTrainer", "AlternatingStepTrainer", "FeatureStage", "LRSchedulers", "create_ddp", "test_with_tta"]


class FeatureStage(nn.Module):
    """E, CM and G of a model as one module (without D and C), for one DDP wrapper.

    ``forward(batched_inputs)`` runs the training-step forward on images;
    ``forward(labels=...)`` generates features for pixel labels (finetuning step).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.contextual_module = model.contextual_module
        self.generator = model.generator
        self._model = [model]  # a plain reference: D and C must not join this wrapper

    def forward(self, batched_inputs=None, labels=None, frozen_context: bool = False):
        model = self._model[0]
        if batched_inputs is not None:
            return model.extract_features(batched_inputs, frozen_context=frozen_context)
        return model.generate_features(labels)


def create_ddp(module: nn.Module) -> nn.Module:
    """DDP wrapper when there are several processes; CPU models get ``device_ids=None``
    (detectron2's create_ddp_model passes a CUDA device, which PyTorch rejects for CPU)."""
    if comm.get_world_size() == 1:
        return module
    on_cuda = next(module.parameters()).is_cuda
    return DistributedDataParallel(
        module,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        broadcast_buffers=False,
        # Each step leaves some parameters unused (D's head in the main step, E and CM when
        # finetuning, C's head in D's step).
        find_unused_parameters=True,
    )


class LRSchedulers(hooks.HookBase):
    """Steps every LR scheduler after each iteration, logs each LR, and checkpoints them all.

    One hook for all schedulers: detectron2 keeps the state of only one hook per class. A
    schedule given as (optimizer, scheduler, active) logs and steps only after the iterations
    for which ``active(iteration)`` is true (the phases of SOLVER.CAGNET_SCHEDULE.MIXED).
    """

    def __init__(self, schedules: Dict[str, tuple]):
        self._schedules = schedules  # name -> (optimizer, scheduler[, active])

    def after_step(self):
        storage = get_event_storage()
        for name, (optimizer, scheduler, *active) in self._schedules.items():
            if active and not active[0](self.trainer.iter):
                continue
            group = max(optimizer.param_groups, key=lambda g: len(g["params"]))
            storage.put_scalar(name, group["lr"], smoothing_hint=False)
            scheduler.step()

    def state_dict(self):
        return {name: entry[1].state_dict() for name, entry in self._schedules.items()}

    def load_state_dict(self, state_dict):
        for name, entry in self._schedules.items():
            entry[1].load_state_dict(state_dict[name])


class AlternatingStepTrainer(SimpleTrainer):
    """The inner trainer: runs a training or a finetuning step, as the phase schedule says.

    It owns both optimisers (saved in its state) and the run seed. The data loader is built on
    first use, starting after the batches that earlier training steps consumed, so that a resumed
    run reads what the uninterrupted run would have read.
    """

    def __init__(self, model, feature_stage, heads, optimizer, optimizer_d, phases: PhaseSchedule,
                 seed: int, data_loader_factory, precision: Optional[Precision] = None,
                 loss_guard: Optional[LossGuard] = None, finetuning_lr_factor: float = 1.0,
                 mixed: Optional[MixedPhase] = None):
        """``precision``: autocast and loss scaling of both steps (default float32);
        ``finetuning_lr_factor``: the finetuning steps' learning rate as a multiple of the schedule's;
        ``mixed``: the phase with E and CM frozen and its own optimisers (SOLVER.CAGNET_SCHEDULE.MIXED)."""
        super().__init__(model, data_loader=None, optimizer=optimizer)
        self.mixed_precision = MixedPrecision(precision or Precision(model.device.type, None, False, "float32"))
        self.loss_guard = loss_guard or LossGuard()
        self.feature_stage, self.heads = feature_stage, heads
        self.optimizer_d = optimizer_d
        self.phases = phases
        self.seed = seed
        self._data_loader_factory = data_loader_factory
        self.finetuning_lr_factor = finetuning_lr_factor
        self.mixed = mixed

    @classmethod
    def from_config(cls, cfg, model, optimizers, data_loader_factory, mixed: Optional[MixedPhase] = None):
        """Wraps E+CM+G and D+C for DDP (when distributed) around ``model``.

        ``data_loader_factory(seed, start_batch)`` returns an iterable of training batches.
        """
        precision = precision_from_config(cfg, model.device)
        log_precision(precision, cfg.SOLVER.AMP.ENABLED)
        return cls(
            model,
            feature_stage=create_ddp(FeatureStage(model)),
            heads=create_ddp(model.heads),
            optimizer=optimizers[0],
            optimizer_d=optimizers[1],
            phases=PhaseSchedule.from_config(cfg),
            seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
            data_loader_factory=data_loader_factory,
            precision=precision,
            loss_guard=LossGuard.from_config(cfg, model),
            finetuning_lr_factor=cfg.SOLVER.CAGNET_SCHEDULE.FINETUNING_LR_FACTOR,
            mixed=mixed,
        )

    def _autocast(self):
        return self.mixed_precision.autocast()

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self.data_loader = self._data_loader_factory(self.seed, self.phases.num_training_steps(self.iter))
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def in_mixed_phase(self, iteration: Optional[int] = None) -> bool:
        return self.mixed is not None and self.mixed.active(self.iter if iteration is None else iteration)

    def _phase_parts(self):
        """(optimiser of the rest, D's optimiser, loss weights or None, E and CM frozen) of this
        iteration's phase. Entering the mixed phase drops the first phase's optimiser state: E and
        CM then have none, and G, C and D start afresh with the phase's optimisers."""
        if not self.in_mixed_phase():
            return self.optimizer, self.optimizer_d, None, False
        for optimizer in (self.optimizer, self.optimizer_d):
            optimizer.state.clear()
        return self.mixed.optimizer, self.mixed.optimizer_d, self.mixed.weights, True

    def run_step(self):
        assert self.model.training, "[AlternatingStepTrainer] model was changed to eval mode!"
        if self.phases.phase(self.iter) == TRAINING:
            self.training_step()
        else:
            self.finetuning_step()

    def training_step(self):
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        optimizer, optimizer_d, weights, frozen = self._phase_parts()
        self._seed_step()
        with self._autocast():
            feats = self.feature_stage(data, frozen_context=frozen)
            d_losses = self.model.discriminator_losses(feats, heads=self.heads)
        mp = self.mixed_precision
        if d_losses:  # none without G or without the adversarial loss
            optimizer_d.zero_grad(set_to_none=True)
            mp.backward(sum(d_losses.values()))
            self.loss_guard.check("training step, D's update", self.iter, d_losses, mp.checked(optimizer_d))
            mp.step(optimizer_d)
        with self._autocast():
            losses = self.model.training_losses(feats, heads=self.heads, weights=weights)
        optimizer.zero_grad(set_to_none=True)
        mp.backward(sum(losses.values()))
        self.loss_guard.check("training step", self.iter, losses, mp.checked(optimizer))
        mp.step(optimizer)
        mp.update()  # once per iteration, after both optimisers stepped
        self._log({**d_losses, **losses}, data_time, finetuning=False)

    def _seed_step(self):
        # Per-iteration RNG for z, dropout and generated labels, seeded after the data is read
        # (creating a loader draws from the global RNG): a resumed run draws exactly what the
        # uninterrupted run would have drawn.
        torch.manual_seed((self.seed * 1_000_003 + self.iter * 7_919 + comm.get_rank()) % (2**63))

    def finetuning_step(self):
        optimizer, _, weights, _ = self._phase_parts()
        self._seed_step()
        labels = self.model.sample_finetune_labels()
        with self._autocast():
            fake = self.feature_stage(labels=labels)
            losses = self.model.finetuning_losses(fake, labels, heads=self.heads, weights=weights)
        mp = self.mixed_precision
        optimizer.zero_grad(set_to_none=True)
        mp.backward(sum(losses.values()))
        self.loss_guard.check("finetuning step", self.iter, losses, mp.checked(optimizer))
        with _scaled_lr(optimizer, self.finetuning_lr_factor):
            mp.step(optimizer)
        mp.update()
        self._log(losses, 0.0, finetuning=True)

    def _log(self, losses, data_time: float, finetuning: bool):
        self._write_metrics(losses, data_time)
        if comm.is_main_process():
            storage = get_event_storage()
            storage.put_scalar("finetuning_step", float(finetuning), smoothing_hint=False)
            if self.mixed_precision.scaler is not None:
                storage.put_scalar("[metric]grad_scaler", self.mixed_precision.scale(), smoothing_hint=False)

    def state_dict(self):
        ret = super().state_dict()  # iteration, optimizer
        ret.update(optimizer_d=self.optimizer_d.state_dict(), seed=self.seed, **self.mixed_precision.state_dict())
        if self.mixed is not None:
            ret.update(optimizer_mixed=self.mixed.optimizer.state_dict(),
                       optimizer_d_mixed=self.mixed.optimizer_d.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.optimizer_d.load_state_dict(state_dict["optimizer_d"])
        if self.mixed is not None and "optimizer_mixed" in state_dict:
            self.mixed.optimizer.load_state_dict(state_dict["optimizer_mixed"])
            self.mixed.optimizer_d.load_state_dict(state_dict["optimizer_d_mixed"])
        self.mixed_precision.load_state_dict(state_dict)
        self.seed = state_dict["seed"]
        self._data_loader_iter_obj = None


@contextlib.contextmanager
def _scaled_lr(optimizer, factor: float):
    """Every group's lr times ``factor`` for one step, then exactly the scheduler's values again
    (so the logged LR, the schedule and a checkpoint never see the scaled value)."""
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr


def _parameters(module) -> List[nn.Parameter]:
    """A module's parameters; none for a part the model does not have (an ablation)."""
    return list(module.parameters()) if module is not None else []


def _param_groups(named_parts: List[Tuple[List[nn.Parameter], float]], base_lr: float, weight_decay: float):
    groups, seen = [], set()
    for params, multiplier in named_parts:
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": base_lr * multiplier, "weight_decay": weight_decay})
    return groups


def _make_optimizer(cfg, kind: str, groups, lr: float):
    if kind == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif kind == "ADAM":
        cls, kwargs = torch.optim.Adam, {"betas": tuple(cfg.SOLVER.ADAM_BETAS)}
    else:
        raise ValueError(f"Optimizer must be 'SGD' or 'ADAM', got {kind!r}")
    return maybe_add_gradient_clipping(cfg, cls)(groups, lr=lr, **kwargs)


class CaGNetTrainer(CalibrationMixin, DefaultTrainer):
    def __init__(self, cfg, classes: Optional[Dict] = None):
        """``classes`` overrides the dataset's class split (the calibration network uses it)."""
        validate_config(cfg)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # Loading the records first checks the data at once, before the model is built.
        records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        model = self.build_model(cfg) if classes is None else self._build_model_with_classes(cfg, classes)
        optimizer, optimizer_d = self.build_optimizers(cfg, model)
        # Training labels: the model's unseen classes (the dataset's, plus the held-out ones of a
        # calibration network) -> ignore.
        metas = [MetadataCatalog.get(n) for n in cfg.DATASETS.TRAIN]
        lut = seen_label_lut(model.unseen_ids.tolist(), model.ignore_value)[training_label_lut(metas)]
        mapper = ZeroShotSemSegDatasetMapper(**{**ZeroShotSemSegDatasetMapper.from_config(cfg, is_train=True), "label_lut": lut})

        def data_loader_factory(seed, start_batch):
            return build_resumable_train_loader(cfg, mapper, seed=seed, start_batch=start_batch, records=records)

        mixed = build_mixed_phase(cfg, model, _make_optimizer, _param_groups) if cfg.SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED else None
        self._trainer = AlternatingStepTrainer.from_config(cfg, model, (optimizer, optimizer_d), data_loader_factory, mixed)
        self.scheduler = first_phase_lr_scheduler(cfg, optimizer)
        self.scheduler_d = first_phase_lr_scheduler(cfg, optimizer_d)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        connect_loss_guard(self)
        self.register_hooks(self.build_hooks())

    @property
    def optimizer_d(self):
        return self._trainer.optimizer_d

    @staticmethod
    def _build_model_with_classes(cfg, classes: Dict):
        from detectron2.modeling import META_ARCH_REGISTRY

        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg, classes=classes)
        model.to(torch.device(cfg.MODEL.DEVICE))
        logging.getLogger(__name__).info(f"Model:\n{model}")
        return model

    # ------------------------------------------------------------------ building blocks
    @classmethod
    def build_optimizers(cls, cfg, model):
        """(the optimiser of E, CM, G, C; D's optimiser)."""
        m, wd = cfg.SOLVER.LR_MULTIPLIERS, cfg.SOLVER.WEIGHT_DECAY
        heads = model.heads
        rest = _param_groups(
            [
                (list(model.backbone.resnet.parameters()), m.BACKBONE),
                (list(model.backbone.aspp.parameters()), m.ASPP),
                (_parameters(model.contextual_module), m.CONTEXTUAL_MODULE),
                (_parameters(model.generator), m.GENERATOR),
                (list(heads.shared.parameters()) + list(heads.classifier.parameters()), m.CLASSIFIER),
            ],
            cfg.SOLVER.BASE_LR,
            wd,
        )
        d = _param_groups(
            [(list(heads.shared.parameters()) + _parameters(heads.discriminator), 1.0)],
            cfg.SOLVER.D_BASE_LR,
            wd,
        )
        return (
            _make_optimizer(cfg, cfg.SOLVER.OPTIMIZER, rest, cfg.SOLVER.BASE_LR),
            _make_optimizer(cfg, cfg.SOLVER.D_OPTIMIZER, d, cfg.SOLVER.D_BASE_LR),
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return cls.build_optimizers(cfg, model)[0]

    @classmethod
    def build_train_loader(cls, cfg):
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_resumable_train_loader(cfg, ZeroShotSemSegDatasetMapper(cfg, is_train=True), seed=seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=ZeroShotSemSegDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        kind = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
        if kind != EVALUATOR_TYPE:
            raise ValueError(f"Dataset {dataset_name!r} has evaluator_type {kind!r}, expected {EVALUATOR_TYPE!r}")
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return ZeroShotSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                                       save_predictions=cfg.TEST.SAVE_PREDICTIONS)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        return test_with_tta(cls, cfg, model)

    def build_hooks(self):
        mixed = self._trainer.mixed
        if mixed is None:
            schedules = {"lr": (self.optimizer, self.scheduler), "lr_d": (self.optimizer_d, self.scheduler_d)}
        else:
            def first(iteration):
                return not mixed.active(iteration)

            schedules = {"lr": (self.optimizer, self.scheduler, first), "lr_d": (self.optimizer_d, self.scheduler_d, first),
                         "lr_mixed": (mixed.optimizer, mixed.scheduler, mixed.active),
                         "lr_d_mixed": (mixed.optimizer_d, mixed.scheduler_d, mixed.active)}
        return standard_hooks(self, LRSchedulers(schedules))

    def resume_or_load(self, resume=True):
        check_output_dir(self.cfg, resume, clear=True)
        if not (resume and self.checkpointer.has_checkpoint()) and not self.cfg.MODEL.WEIGHTS:
            if self.cfg.MODEL.CAGNET.EXPECT_PRETRAINED_BACKBONE:
                logging.getLogger(__name__).warning(
                    "\n" + "!" * 88 + "\nMODEL.WEIGHTS is empty: the backbone starts from RANDOM "
                    "initialisation. The paper's numbers need an\nImageNet-pretrained ResNet-101 "
                    "(detectron2's R-101.pkl); see docs/GETTING_STARTED.md, 'Pretrained weights'.\n" + "!" * 88
                )
        super().resume_or_load(resume=resume)


def test_with_tta(trainer_cls, cfg, model) -> Dict:
    """detectron2's ``DefaultTrainer.test_with_TTA``: the test sets evaluated through
    :class:`SemanticSegmentorWithTTA` (``TEST.AUG.*``), results (and predictions) under
    OUTPUT_DIR/inference_TTA/<dataset>, returned under their keys + "_TTA"."""
    logger = logging.getLogger(__name__)
    logger.info(f"Running inference with test-time augmentation: short sides {list(cfg.TEST.AUG.MIN_SIZES)}, "
                f"long side at most {cfg.TEST.AUG.MAX_SIZE}, flip {cfg.TEST.AUG.FLIP}")
    model = SemanticSegmentorWithTTA(cfg, model)
    evaluators = [
        trainer_cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
        for name in cfg.DATASETS.TEST
    ]
    res = trainer_cls.test(cfg, model, evaluators)
    return OrderedDict((k + "_TTA", v) for k, v in res.items())


def connect_loss_guard(trainer: DefaultTrainer) -> None:
    """Tell the inner trainer's LossGuard where the run's last good checkpoint is."""
    guard, checkpointer = trainer._trainer.loss_guard, trainer.checkpointer
    guard.last_checkpoint = lambda: checkpointer.last_good
    guard.started_from = f"MODEL.WEIGHTS {trainer.cfg.MODEL.WEIGHTS}" if trainer.cfg.MODEL.WEIGHTS else "random initialisation"


def _stopped_early(trainer) -> bool:
    """The loss guard stopped the run, a checkpoint could not be saved, or a signal preempted it:
    no final checkpoint, no final evaluation (the run is not finished)."""
    guard = getattr(trainer._trainer, "loss_guard", None)
    return ((guard is not None and guard.stopped_by is not None)
            or getattr(trainer.checkpointer, "save_failed", None) is not None
            or getattr(trainer, "preempted", None) is not None)


class GuardedPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Writes no final checkpoint when the run stopped early (at its last iteration)."""

    def after_train(self):
        if not _stopped_early(self.trainer):
            super().after_train()


class GuardedEvalHook(hooks.EvalHook):
    """Does not evaluate a run that stopped early."""

    def after_train(self):
        if not _stopped_early(self.trainer):
            super().after_train()


def standard_hooks(trainer: DefaultTrainer, lr_hook: hooks.HookBase) -> List[hooks.HookBase]:
    """DefaultTrainer's hooks with ``lr_hook`` in place of its single LRScheduler hook (our
    trainers step several optimisers): timer, LR schedules, checkpointer, evaluation, writers,
    then preemption signals and time-based checkpoints (preemption.py)."""
    cfg = trainer.cfg
    ret = [hooks.IterationTimer(), lr_hook]
    if comm.is_main_process():
        ret.append(GuardedPeriodicCheckpointer(trainer.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

    def test_and_save_results():
        trainer._last_eval_results = trainer.test(cfg, trainer.model)
        return trainer._last_eval_results

    ret.append(GuardedEvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
    if comm.is_main_process():
        ret.append(hooks.PeriodicWriter(trainer.build_writers(), period=20))
    # Last: a preemption checkpoint holds the iteration's LR step, metrics and evaluation.
    ret.append(PreemptionHook.from_config(cfg, trainer.checkpointer))
    return ret
