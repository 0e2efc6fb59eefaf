# Copyright (c) CaGNet-D2 contributors.
"""Contextual Module CM (paper Sec. 3.2).

Three serial dilated 3x3 convs (dilations 1, 2, 5) give context maps of growing receptive field.
A context selector (3x3 conv -> 3 channels -> sigmoid) weighs each map pixel-wise, and a 1x1 conv
on the weighted concatenation predicts the mean and log-variance of the latent code Z. The CM
output is the residual attention X = F + F * sigmoid(Z); Z is sampled in training and equals the
mean at test time. Z also conditions the generator, so the reconstruction loss teaches CM to
encode the pixel's context.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

__all__ = ["ContextualModule", "ContextOutput", "sample_latent_code"]


@dataclass
class ContextOutput:
    """Everything CM computes for a feature map F of shape (N, l, h, w)."""

    x: torch.Tensor  # (N, l, h, w) CM output: input of C and target of G
    z: torch.Tensor  # (N, l, h, w) latent code: a sample in training, the mean at test time
    mu: torch.Tensor  # (N, l, h, w)
    logvar: torch.Tensor  # (N, l, h, w) log of the variance sigma^2
    scale_weights: torch.Tensor  # (N, 3, h, w) context selector output, one weight per scale


def sample_latent_code(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z ~ N(mu, exp(logvar)), reparameterised (differentiable in mu and logvar)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class ContextualModule(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        context_channels: Optional[int] = None,
        dilations: Sequence[int] = (1, 2, 5),
        serial: bool = True,
        residual: bool = True,
        sigmoid_input: bool = False,
        sigmoid_output: bool = False,
        detach_context_branch_input: bool = False,
        kernel_size: int = 3,
        selector: str = "pixel",
        multi_scale: bool = True,
        mask_center: bool = False,
    ):
        """
        Args:
            in_channels: channels l of the feature map F; also the size of the latent code.
            context_channels: channels of each context map (default: ``in_channels``).
            dilations: dilation of each context conv.
            serial: chain the context convs (paper); False applies each to F (ablation).
            residual: X = F + F * sigmoid(Z) (paper); False gives X = F * sigmoid(Z) (ablation).
            sigmoid_input: feed sigmoid(F) to the context convs (reference code).
            sigmoid_output: X = sigmoid(F + F * sigmoid(Z)) (reference code).
            detach_context_branch_input: the context branch sees F detached, so that the latent
                code's losses (KL, and REC through z) do not reach E; E still learns through X's
                F terms.
            kernel_size: of the context convs (3, paper; 1: the "1x1 convs" ablation).
            selector: "pixel" (the paper's context selector: a weight per scale and pixel),
                "global" (one weight per scale and image: the pixel weights averaged), or
                "none" (every map weighted 1).
            multi_scale: the latent code from all context maps (paper) or the last one only.
            mask_center: zero the centre tap of every context conv (the "conv (mask)" row of the
                paper's Table 3, as we read it: the code sees a pixel's surroundings, not the pixel).
                With serial dilations 1, 2, 5 no path through the three convs returns to the centre,
                so the context maps at a pixel do not depend on its own F (padding aside); the pixel
                selector's 3x3 conv reads the neighbours' maps, so its weights still can.
        """
        super().__init__()
        if selector not in ("pixel", "global", "none"):
            raise ValueError(f"MODEL.CONTEXTUAL_MODULE.SELECTOR must be 'pixel', 'global' or 'none', got {selector!r}")
        ctx = context_channels or in_channels
        self.selector_mode, self.multi_scale = selector, multi_scale
        self.serial = serial
        self.residual = residual
        self.sigmoid_input = sigmoid_input
        self.sigmoid_output = sigmoid_output
        self.detach_context_branch_input = detach_context_branch_input
        if mask_center and kernel_size % 2 == 0:
            raise ValueError(f"MODEL.CONTEXTUAL_MODULE.MASK_CENTER needs an odd KERNEL_SIZE, got {kernel_size}")
        self.context_convs = nn.ModuleList()
        for i, d in enumerate(dilations):
            c_in = in_channels if (i == 0 or not serial) else ctx
            pad = d * (kernel_size // 2)
            self.context_convs.append(nn.Conv2d(c_in, ctx, kernel_size, padding=pad, dilation=d))
        num_scales = len(dilations)
        tap_mask = None
        if mask_center:
            tap_mask = torch.ones(1, 1, kernel_size, kernel_size)
            tap_mask[..., kernel_size // 2, kernel_size // 2] = 0.0
        # Not persistent: checkpoints stay those of the unmasked module.
        self.register_buffer("tap_mask", tap_mask, persistent=False)
        # Context selector: one weight per scale and pixel.
        self.selector = nn.Conv2d(num_scales * ctx, num_scales, 3, padding=1) if selector != "none" else None
        # Mean and log-variance of Z from the weighted context maps.
        self.latent = nn.Conv2d((num_scales if multi_scale else 1) * ctx, 2 * in_channels, 1)
        for m in [*self.context_convs, *([self.selector] if self.selector is not None else []), self.latent]:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        # Start at the prior (mu ~ 0, log-variance 0), where the KL term is ~0.
        nn.init.normal_(self.latent.weight, std=1e-3)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        c = cfg.MODEL.CONTEXTUAL_MODULE
        return {
            "in_channels": in_channels,
            "context_channels": c.CHANNELS or None,
            "dilations": tuple(c.DILATIONS),
            "serial": c.SERIAL,
            "residual": c.RESIDUAL,
            "sigmoid_input": c.SIGMOID_INPUT,
            "sigmoid_output": c.SIGMOID_OUTPUT,
            "detach_context_branch_input": c.DETACH_CONTEXT_BRANCH_INPUT,
            "kernel_size": c.KERNEL_SIZE,
            "selector": c.SELECTOR,
            "multi_scale": c.MULTI_SCALE,
            "mask_center": c.MASK_CENTER,
        }

    def _context_conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if self.tap_mask is None:
            return conv(x)
        return F.conv2d(x, conv.weight * self.tap_mask, conv.bias, conv.stride, conv.padding, conv.dilation)

    def forward(self, features: torch.Tensor, sample: Optional[bool] = None) -> ContextOutput:
        """
        Args:
            features: F, (N, l, h, w).
            sample: draw Z ~ N(mu, sigma^2) (default: in training mode) or use Z = mu.
        """
        sample = self.training if sample is None else sample
        h = features.detach() if self.detach_context_branch_input else features
        h = torch.sigmoid(h) if self.sigmoid_input else h
        context_maps, prev = [], h
        for conv in self.context_convs:
            prev = F.relu(self._context_conv(conv, prev if self.serial else h))
            context_maps.append(prev)
        stacked = torch.cat(context_maps, dim=1)
        n, _, h_, w_ = stacked.shape
        if self.selector is None:
            scale_weights = stacked.new_ones(n, len(context_maps), h_, w_)
        else:
            scale_weights = torch.sigmoid(self.selector(stacked))
            if self.selector_mode == "global":
                scale_weights = scale_weights.mean(dim=(2, 3), keepdim=True).expand(-1, -1, h_, w_)
        if self.multi_scale:
            weighted = torch.cat([m * scale_weights[:, i : i + 1] for i, m in enumerate(context_maps)], dim=1)
        else:
            weighted = context_maps[-1] * scale_weights[:, -1:]
        mu, logvar = self.latent(weighted).chunk(2, dim=1)
        # Numerical guard only (sigma in [3e-7, 2e4]); the reference's clamp at 0 (sigma >= 1)
        # changed the model and is not reproduced.
        logvar = logvar.clamp(-30.0, 20.0)
        z = sample_latent_code(mu, logvar) if sample else mu
        attention = features * torch.sigmoid(z)
        x = features + attention if self.residual else attention
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return ContextOutput(x=x, z=z, mu=mu, logvar=logvar, scale_weights=scale_weights)
