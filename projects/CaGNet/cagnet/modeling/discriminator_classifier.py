# Copyright (c) CaGNet-D2 contributors.
"""Discriminator D and classifier C (paper Sec. 3.3), which share their first 1x1 conv.

D scores a pixel feature as real or generated (one logit); C classifies it into all seen and
unseen classes. Both are two 1x1 convs; the first is one shared module. Inputs are pixel lists
(P, l) in training and feature maps (N, l, h, w) at test time.
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from .dropout import WordMaskDropout

__all__ = ["DiscriminatorClassifier"]


def _pointwise(x: torch.Tensor, layer: nn.Conv2d, frozen: bool = False) -> torch.Tensor:
    """Apply a 1x1 conv to a map (N, C, h, w) or a pixel list (P, C).

    ``frozen`` uses detached parameters: gradients reach ``x`` but not the layer.
    """
    weight, bias = layer.weight, layer.bias
    if frozen:
        weight, bias = weight.detach(), bias.detach()
    if x.dim() == 4:
        return F.conv2d(x, weight, bias)
    return F.linear(x, weight.flatten(1), bias)


class DiscriminatorClassifier(nn.Module):
    @configurable
    def __init__(self, *, in_channels: int, num_classes: int, hidden_dim: int = 1024, dropout: float = 0.5,
                 with_discriminator: bool = True):
        """``with_discriminator`` False: C only (a model without G has nothing for D to judge)."""
        super().__init__()
        self.shared = nn.Conv2d(in_channels, hidden_dim, 1)
        self.dropout = WordMaskDropout(dropout)  # the paper's dropout, cheaper on the CPU
        self.classifier = nn.Conv2d(hidden_dim, num_classes, 1)
        self.discriminator = nn.Conv2d(hidden_dim, 1, 1) if with_discriminator else None
        for m in (self.shared, self.classifier, *([self.discriminator] if with_discriminator else [])):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, in_channels: int, num_classes: int):
        h = cfg.MODEL.DISCRIMINATOR_CLASSIFIER
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "hidden_dim": h.HIDDEN_DIM,
            "dropout": h.DROPOUT,
            "with_discriminator": cfg.MODEL.FEATURE_GENERATOR.ENABLED,
        }

    @property
    def num_classes(self) -> int:
        return self.classifier.out_channels

    def _hidden(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        return self.dropout(F.relu(_pointwise(x, self.shared, frozen)))

    def forward(
        self,
        cls_input: Optional[torch.Tensor] = None,
        disc_input: Optional[torch.Tensor] = None,
        frozen_discriminator: bool = False,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Class logits of ``cls_input`` and real/fake logits of ``disc_input``.

        One call computes both, so that a DistributedDataParallel wrapper sees one forward per
        backward. ``frozen_discriminator`` makes D a fixed function (the generator's adversarial
        loss must not train D, including the conv D shares with C).
        """
        cls_logits = disc_logits = None
        if cls_input is not None:
            cls_logits = _pointwise(self._hidden(cls_input), self.classifier)
        if disc_input is not None:
            hidden = self._hidden(disc_input, frozen_discriminator)
            disc_logits = _pointwise(hidden, self.discriminator, frozen_discriminator).squeeze(1)
        return cls_logits, disc_logits

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        """The activation of the shared conv as C sees it (with dropout in training mode)."""
        return self._hidden(features)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self(cls_input=features)[0]
