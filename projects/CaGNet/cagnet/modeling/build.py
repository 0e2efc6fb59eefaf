# Copyright (c) CaGNet-D2 contributors.
"""Build a model for inference from a config and a checkpoint."""
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from .meta_arch import zero_shot_classes_from_checkpoint

__all__ = ["build_model_from_checkpoint"]


def build_model_from_checkpoint(cfg, weights: str, eval_mode: bool = True) -> torch.nn.Module:
    """The config's model with the checkpoint's weights and, when the checkpoint stores one, its
    own class list (which may differ from the config's dataset, e.g. after tools/add_classes.py)."""
    classes = zero_shot_classes_from_checkpoint(weights) if weights else None
    if classes is None:
        model = build_model(cfg)
    else:
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg, classes=classes)
        model.to(torch.device(cfg.MODEL.DEVICE))
    DetectionCheckpointer(model).load(weights)
    return model.eval() if eval_mode else model
