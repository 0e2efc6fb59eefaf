# Copyright (c) CaGNet-D2 contributors.
"""Build a model for inference from a config and a checkpoint."""
import logging
import os
import pickle
from typing import Dict

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from .checkpoint_file import CheckpointMismatchError, damaged, mismatch_message, read_checkpoint_file, shape_mismatches
from .meta_arch import zero_shot_classes_from_checkpoint

__all__ = ["build_model_from_checkpoint", "check_checkpoint_fits", "warn_if_untrained"]

logger = logging.getLogger(__name__)


def check_checkpoint_fits(model: torch.nn.Module, weights: str) -> None:
    """Refuse a ``.pth`` checkpoint whose tensors do not fit ``model``.

    detectron2's loader only warns about such tensors and leaves those layers at random, which
    gives plausible-looking garbage when the config changed since training.
    """
    if not weights.endswith(".pth"):
        return  # e.g. an ImageNet backbone in Caffe2 format: partial by design
    saved = read_checkpoint_file(weights)
    saved: Dict = saved.get("model", saved) if isinstance(saved, dict) else {}
    own = model.state_dict()
    bad = shape_mismatches(own, saved)
    # pixel_*: not saved; calibration: gamma, 0 in checkpoints older than calibrated CaGNet.
    missing = [k for k in own if k not in saved and not k.startswith("pixel_") and k != "calibration"]
    if bad or missing:
        raise CheckpointMismatchError(mismatch_message(weights, bad, missing))


def warn_if_untrained(weights: str) -> None:
    """A loud warning when a tool runs a model without trained weights of this project."""
    if weights and weights.endswith(".pth"):
        return
    what = ("MODEL.WEIGHTS is empty: this runs a RANDOMLY INITIALISED model" if not weights else
            f"MODEL.WEIGHTS {weights} is not a checkpoint of this project (.pth): only what it holds "
            "(e.g. an ImageNet backbone) is loaded, the rest of the model is RANDOM")
    logger.warning("\n" + "!" * 88 + f"\n{what}; its outputs mean nothing. Pass a trained model: "
                   "MODEL.WEIGHTS output/.../model_final.pth\n" + "!" * 88)


def build_model_from_checkpoint(cfg, weights: str, eval_mode: bool = True) -> torch.nn.Module:
    """The config's model with the checkpoint's weights and, when the checkpoint stores one, its
    own class list (which may differ from the config's dataset, e.g. after tools/add_classes.py).
    A ``.pth`` checkpoint must fit the model exactly; a damaged one is named
    (DamagedCheckpointError); running without trained weights is warned about loudly."""
    warn_if_untrained(weights)
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist")
    classes = zero_shot_classes_from_checkpoint(weights) if weights else None
    if classes is None:
        model = build_model(cfg)
    else:
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg, classes=classes)
        model.to(torch.device(cfg.MODEL.DEVICE))
    if weights:
        check_checkpoint_fits(model, weights)
    try:
        DetectionCheckpointer(model).load(weights)
    except (pickle.UnpicklingError, EOFError) as e:  # a .pkl (a .pth was read once above)
        raise damaged(weights, e) from e
    return model.eval() if eval_mode else model
