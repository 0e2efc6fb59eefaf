# Copyright (c) CaGNet-D2 contributors.
"""Feature generator G (paper Sec. 3.3): a pixel-wise MLP from [z, w] to a fake feature x~.

z is the pixel's latent code (from CM in the training step, N(0, I) in the finetuning step) and w
its class's word embedding. Pixel-wise 1x1 convs are written as linear layers over the channel
axis, which accept both pixel lists (P, C) and maps (N, C, h, w).
"""
from typing import Sequence

import torch
from torch import nn

from detectron2.config import configurable

from .dropout import WordMaskDropout

__all__ = ["FeatureGenerator"]


class FeatureGenerator(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        latent_dim: int,
        embedding_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (512,),
        negative_slope: float = 0.2,
        dropout: float = 0.5,
        output_activation: str = "",
    ):
        """
        Args:
            latent_dim: size of z (the feature channels l).
            embedding_dim: size d of the class embeddings w.
            out_dim: size of the generated feature (l).
            hidden_dims: widths of the hidden layers (LeakyReLU + dropout after each).
            output_activation: "" (linear, paper) or "sigmoid" (reference code).
        """
        super().__init__()
        if output_activation not in ("", "sigmoid"):
            raise ValueError(f"output_activation must be '' or 'sigmoid', got {output_activation!r}")
        layers, width = [], latent_dim + embedding_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(negative_slope), WordMaskDropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        if output_activation == "sigmoid":
            layers.append(nn.Sigmoid())
        self.mlp = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    @classmethod
    def from_config(cls, cfg, feature_dim: int, embedding_dim: int):
        g = cfg.MODEL.FEATURE_GENERATOR
        return {
            "latent_dim": feature_dim,
            "embedding_dim": embedding_dim,
            "out_dim": feature_dim,
            "hidden_dims": tuple(g.HIDDEN_DIMS),
            "negative_slope": g.NEGATIVE_SLOPE,
            "dropout": g.DROPOUT,
            "output_activation": g.OUTPUT_ACTIVATION,
        }

    def forward(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """z: (P, l) or (N, l, h, w); w: (P, d) or (N, d, h, w). Returns (P, l) or (N, l, h, w)."""
        if z.dim() == 4:
            out = self.mlp(torch.cat([z, w], dim=1).permute(0, 2, 3, 1))
            return out.permute(0, 3, 1, 2)
        return self.mlp(torch.cat([z, w], dim=1))
