# Copyright (c) CaGNet-D2 contributors.
"""SPNet (Xian et al., CVPR 2019), the semantic-projection baseline of the paper's Table 1.

E (the same backbone as CaGNet) -> a 1x1 conv that projects every pixel feature into the word
embedding space (d) -> the score of class k is the dot product with its FIXED embedding w_k. It is
trained with cross-entropy over the seen classes only (softmax over the seen scores; the mapper
already turned unseen pixels into ignore). At test time it scores all seen and unseen classes;
SPNet-c subtracts a calibration constant gamma from the seen scores (the ``calibration`` buffer,
chosen by :class:`cagnet.engine.ZeroShotStagedTrainer`, see ``MODEL.CALIBRATION``).
"""
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from .losses import classification_loss
from .meta_arch import zero_shot_classes_from_config
from .zero_shot_base import ZeroShotSegmentor

__all__ = ["SPNet"]


@META_ARCH_REGISTRY.register()
class SPNet(ZeroShotSegmentor):
    """Stages (for the staged trainer): one, ``"segmentation"``: E and the projection."""

    @configurable
    def __init__(self, *, feature_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.projection = nn.Conv2d(feature_dim, self.class_embeddings.shape[1], 1)
        nn.init.normal_(self.projection.weight, std=0.01)
        nn.init.zeros_(self.projection.bias)

    @classmethod
    def from_config(cls, cfg, classes: Optional[Dict] = None):
        classes = dict(classes) if classes is not None else zero_shot_classes_from_config(cfg)
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "feature_dim": backbone.output_shape()["aspp"].channels,
            **classes,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "channels_last": cfg.MODEL.CAGNET.CHANNELS_LAST,
        }

    STAGES = ("segmentation",)

    def stage_modules(self, stage: str) -> Dict[str, nn.Module]:
        """The modules a stage trains, by LR-multiplier name (see SOLVER.LR_MULTIPLIERS)."""
        if stage != "segmentation":
            raise KeyError(f"SPNet has no stage {stage!r}")
        return {"BACKBONE": self.backbone.resnet, "ASPP": self.backbone.aspp, "CLASSIFIER": self.projection}

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores (N, K, h, w) of a feature map: <projection(f), w_k> for every class k."""
        embedded = self.projection(features)
        return torch.einsum("nchw,kc->nkhw", embedded, self.class_embeddings)

    def segment(self, images):
        return self.scores(self.features(images))

    def forward(self, batched_inputs: List[Dict], stage: str = "segmentation"):
        if not self.training:
            return self.inference(batched_inputs)
        if stage != "segmentation":
            raise KeyError(f"SPNet has no stage {stage!r}")
        images = self.preprocess_image(batched_inputs)
        scores = self.segment(images)
        labels = self.feature_labels(batched_inputs, images.tensor.shape[-2:], scores.shape[-2:])
        valid = labels != self.ignore_value
        labels = labels[valid]
        seen_labels = self.seen_position[labels]
        if (seen_labels < 0).any():
            raise ValueError("SPNet received unseen-class training labels; the mapper must ignore them")
        # Softmax over the seen classes only, as in SPNet.
        seen_scores = self.pixels(scores, valid)[:, self.seen_ids]
        return {"loss_cls": classification_loss(seen_scores, seen_labels)}
