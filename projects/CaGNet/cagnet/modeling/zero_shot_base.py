# Copyright (c) CaGNet-D2 contributors.
"""What the baseline meta-architectures (SPNet, ZS3Net) share with each other and with CaGNet.

A :class:`ZeroShotSegmentor` holds the class list (names, fixed word embeddings, seen and unseen
indices) as buffers, normalises and pads images, downsamples label maps to the feature
resolution, and turns feature-resolution logits into detectron2's ``[{"sem_seg": (K, H, W)}]``.
It also holds the calibration constant gamma that inference subtracts from every seen-class score
(0 unless a calibrated method set it; it is saved in checkpoints with the weights).
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.modeling import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

__all__ = ["ZeroShotSegmentor", "calibrate_scores"]


def calibrate_scores(scores: torch.Tensor, seen_ids: torch.Tensor, gamma) -> torch.Tensor:
    """``scores`` (N, K, ...) with ``gamma`` subtracted from the seen classes (channel axis 1)."""
    if float(gamma) == 0.0:
        return scores
    shift = torch.zeros(scores.shape[1], dtype=scores.dtype, device=scores.device)
    shift[seen_ids] = gamma
    return scores - shift.view(1, -1, *([1] * (scores.dim() - 2)))


class ZeroShotSegmentor(nn.Module):
    """Base of the baseline meta-architectures: E plus whatever a subclass puts on top of F."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        class_embeddings: torch.Tensor,
        seen_class_ids: Sequence[int],
        unseen_class_ids: Sequence[int],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        class_names: Optional[Sequence[str]] = None,
        ignore_value: int = 255,
        channels_last: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        num_classes = class_embeddings.shape[0]
        groups = sorted(list(seen_class_ids) + list(unseen_class_ids))
        if groups != list(range(num_classes)):
            raise ValueError(
                f"seen {list(seen_class_ids)} and unseen {list(unseen_class_ids)} class ids must "
                f"partition 0..{num_classes - 1}"
            )
        if not seen_class_ids:
            raise ValueError("A zero-shot model needs at least one seen class")
        self.register_buffer("class_embeddings", class_embeddings.float().clone(), persistent=True)
        self.register_buffer("seen_ids", torch.as_tensor(sorted(seen_class_ids), dtype=torch.long))
        self.register_buffer("unseen_ids", torch.as_tensor(sorted(unseen_class_ids), dtype=torch.long))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # gamma of calibrated methods: subtracted from the seen-class scores at test time.
        self.register_buffer("calibration", torch.zeros(()), persistent=True)
        # class index -> position among the seen classes (-1: unseen); for seen-only losses.
        seen_pos = torch.full((num_classes,), -1, dtype=torch.long)
        seen_pos[self.seen_ids] = torch.arange(len(self.seen_ids))
        self.register_buffer("seen_position", seen_pos, persistent=False)
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_value = ignore_value
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    def zero_shot_classes(self) -> Dict:
        """The class list, in the form checkpoints store it (see ``AtomicCheckpointer``)."""
        return {
            "class_names": list(self.class_names or [str(i) for i in range(self.num_classes)]),
            "class_embeddings": self.class_embeddings.detach().cpu().clone(),
            "seen_class_ids": self.seen_ids.tolist(),
            "unseen_class_ids": self.unseen_ids.tolist(),
        }

    def set_calibration(self, gamma: float) -> None:
        self.calibration.fill_(float(gamma))

    # ------------------------------------------------------------------ images and labels
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def feature_labels(self, batched_inputs: List[Dict], padded_size, feature_size) -> torch.Tensor:
        """Label maps (N, h, w) at the feature resolution (nearest, at each cell's centre)."""
        targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
        targets = ImageList.from_tensors(targets, self.backbone.size_divisibility, self.ignore_value).tensor
        assert tuple(targets.shape[-2:]) == tuple(padded_size), (targets.shape, padded_size)
        return F.interpolate(targets[:, None].float(), size=feature_size, mode="nearest-exact")[:, 0].long()

    def features(self, images: ImageList) -> torch.Tensor:
        """F = E(image): (N, l, h, w)."""
        return self.backbone(images.tensor)["aspp"]

    def frozen_features(self, images: ImageList) -> torch.Tensor:
        """F as at test time (BN statistics, no gradient), for stages that keep E fixed."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                return self.features(images)
        finally:
            self.backbone.train(was_training)

    @staticmethod
    def pixels(t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (P, C) over the pixels where ``valid`` (N, h, w) is true."""
        return t.permute(0, 2, 3, 1)[valid]

    # ------------------------------------------------------------------ inference
    def segment(self, images: ImageList) -> torch.Tensor:
        """Uncalibrated class scores (N, K, h, w) at the feature resolution."""
        raise NotImplementedError

    @staticmethod
    def postprocess(logit: torch.Tensor, image_size, height: int, width: int) -> torch.Tensor:
        """detectron2's sem_seg_postprocess (crop the padding, resize to height x width), without
        its second full-resolution interpolation when the image already has the output size (a
        same-size bilinear resize is the identity; it took ~40% of evaluating a small model on
        640x480 images with 171 classes)."""
        if (height, width) == tuple(image_size):
            return logit[:, :height, :width]
        return sem_seg_postprocess(logit, image_size, height, width)

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        images = self.preprocess_image(batched_inputs)
        logits = calibrate_scores(self.segment(images), self.seen_ids, self.calibration)
        logits = F.interpolate(logits, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        results = []
        for logit, item, size in zip(logits, batched_inputs, images.image_sizes):
            height, width = item.get("height", size[0]), item.get("width", size[1])
            results.append({"sem_seg": self.postprocess(logit, size, height, width)})
        return results
