# Copyright (c) CaGNet-D2 contributors.
from .checkpoint import AtomicCheckpointer
from .phase_schedule import FINETUNING, TRAINING, PhaseSchedule
from .trainer import AlternatingStepTrainer, CaGNetTrainer, FeatureStage, LRSchedulers, create_ddp
from .self_training import CaGNetSelfTrainingTrainer, SelfTrainingMixin, select_pseudo_labels
from .staged_trainer import StageSchedule, ZeroShotStagedTrainer
from .build import trainer_class
