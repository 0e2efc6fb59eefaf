# Copyright (c) CaGNet-D2 contributors.
from .checkpoint import AtomicCheckpointer
from .phase_schedule import FINETUNING, TRAINING, PhaseSchedule
from .trainer import AlternatingStepTrainer, CaGNetTrainer, FeatureStage, LRSchedulers, create_ddp
