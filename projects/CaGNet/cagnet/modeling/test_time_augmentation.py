# Copyright (c) CaGNet-D2 contributors.
"""Multi-scale and flip test-time augmentation, in the form of Mask2Former's
``SemanticSegmentorWithTTA`` (detectron2's ``DatasetMapperTTA``, keys ``TEST.AUG.*``).

Each image is resized so that its short side is each of ``TEST.AUG.MIN_SIZES`` (the long side at
most ``TEST.AUG.MAX_SIZE``), and also flipped horizontally with ``TEST.AUG.FLIP``; the model runs on
every version and returns logits at the input image's resolution (its ``height`` / ``width``);
flipped ones are flipped back, and the result is their mean.

**Logits are averaged, not probabilities.** A calibrated model (SPNet-c) subtracts gamma from the
seen-class logits inside its inference. The mean is linear, so the mean of the calibrated logits is
the calibrated mean of the logits: gamma acts on TTA's output exactly as on a single pass, and the
calibration statistics that tools/benchmark_methods.py gathers from the uncalibrated output
(best seen minus best unseen logit per pixel, ``cagnet.evaluation.calibration``) decide the TTA
prediction for every gamma. A mean of softmax probabilities would not commute with the shift.
"""
import copy
from typing import Dict, List

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """A zero-shot segmentor with test-time augmentation; called like the model itself
    (``[{"image": (3, H, W) uint8, ...}]`` -> ``[{"sem_seg": (K, H, W) logits}]``)."""

    def __init__(self, cfg, model: nn.Module, tta_mapper=None):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.input_format = cfg.INPUT.FORMAT

    # What tools and the calibration statistics read from a model (the wrapped one's; a model
    # without a calibration buffer gives AttributeError, so getattr(..., default) works).
    @property
    def calibration(self):
        return self.model.calibration

    @property
    def seen_ids(self):
        return self.model.seen_ids

    @property
    def unseen_ids(self):
        return self.model.unseen_ids

    @property
    def class_names(self):
        return self.model.class_names

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def ignore_value(self) -> int:
        return self.model.ignore_value

    @property
    def device(self):
        return self.model.device

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        return [self._inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, dataset_dict: Dict) -> Dict:
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            image = read_image(ret.pop("file_name"), self.input_format)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        ret.setdefault("height", ret["image"].shape[1])
        ret.setdefault("width", ret["image"].shape[2])
        return ret

    @torch.no_grad()
    def _inference_one_image(self, dataset_dict: Dict) -> Dict[str, torch.Tensor]:
        total, count = None, 0
        for aug_input in self.tta_mapper(dataset_dict):
            tfm = aug_input.pop("transforms")
            logits = self.model([aug_input])[0]["sem_seg"]  # at (height, width) of the input image
            if any(isinstance(t, HFlipTransform) for t in tfm.transforms):
                logits = logits.flip(dims=[2])
            total = logits.clone() if total is None else total.add_(logits)
            count += 1
        return {"sem_seg": total / count}
