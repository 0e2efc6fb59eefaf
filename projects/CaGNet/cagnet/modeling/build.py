# Copyright (c) CaGNet-D2 contributors.
"""Build a model for inference from a config and a checkpoint."""
from typing import Dict

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.file_io import PathManager

from .meta_arch import zero_shot_classes_from_checkpoint

__all__ = ["build_model_from_checkpoint", "check_checkpoint_fits"]


def check_checkpoint_fits(model: torch.nn.Module, weights: str) -> None:
    """Refuse a ``.pth`` checkpoint whose tensors do not fit ``model``.

    detectron2's loader only warns about such tensors and leaves those layers at random, which
    gives plausible-looking garbage when the config changed since training.
    """
    if not weights.endswith(".pth"):
        return  # e.g. an ImageNet backbone in Caffe2 format: partial by design
    with PathManager.open(weights, "rb") as f:
        saved = torch.load(f, map_location="cpu", weights_only=True)
    saved: Dict = saved.get("model", saved) if isinstance(saved, dict) else {}
    own = model.state_dict()
    bad = [
        f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        for k, v in saved.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    # pixel_*: not saved; calibration: gamma, 0 in checkpoints older than calibrated CaGNet.
    missing = [f"{k}: missing" for k in own if k not in saved and not k.startswith("pixel_") and k != "calibration"]
    if bad or missing:
        raise ValueError(
            f"{weights} does not fit the model of this config ({len(bad)} tensors of other shapes, "
            f"{len(missing)} missing; {'; '.join((bad + missing)[:3])}). Use the config the checkpoint "
            "was trained with (OUTPUT_DIR/config.yaml of the training run)."
        )


def build_model_from_checkpoint(cfg, weights: str, eval_mode: bool = True) -> torch.nn.Module:
    """The config's model with the checkpoint's weights and, when the checkpoint stores one, its
    own class list (which may differ from the config's dataset, e.g. after tools/add_classes.py).
    A ``.pth`` checkpoint must fit the model exactly."""
    classes = zero_shot_classes_from_checkpoint(weights) if weights else None
    if classes is None:
        model = build_model(cfg)
    else:
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg, classes=classes)
        model.to(torch.device(cfg.MODEL.DEVICE))
    if weights:
        check_checkpoint_fits(model, weights)
    DetectionCheckpointer(model).load(weights)
    return model.eval() if eval_mode else model
