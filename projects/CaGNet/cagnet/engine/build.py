# Copyright (c) CaGNet-D2 contributors.
"""One entry point for every method: the trainer is chosen by the meta-architecture."""
from detectron2.modeling import META_ARCH_REGISTRY

from .self_training import CaGNetSelfTrainingTrainer
from .staged_trainer import ZeroShotStagedTrainer
from .trainer import CaGNetTrainer

__all__ = ["trainer_class"]


def trainer_class(cfg):
    """CaGNetTrainer for CaGNet (its self-training subclass with MODEL.SELF_TRAINING.ENABLED);
    the staged trainer for meta-architectures that declare ``STAGES`` (SPNet, ZS3Net)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "CaGNet":
        return CaGNetSelfTrainingTrainer if cfg.MODEL.SELF_TRAINING.ENABLED else CaGNetTrainer
    if hasattr(META_ARCH_REGISTRY.get(arch), "STAGES"):
        return ZeroShotStagedTrainer
    raise ValueError(f"No trainer for MODEL.META_ARCHITECTURE {arch!r} (CaGNet, SPNet and ZS3Net have one)")
