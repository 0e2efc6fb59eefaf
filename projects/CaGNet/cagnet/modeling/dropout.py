# Copyright (c) CaGNet-D2 contributors.
"""Dropout whose Bernoulli mask is cut from 64-bit random words (used by G and C on the CPU).

Why: torch's CPU dropout draws one Mersenne-Twister number per element, and G and C drop out
every pixel feature of every step; on the built-in config that doubled the training step and more
than doubled the finetuning step (projects/CaGNet/README.md, "Dropout on the CPU"). Here one
draw of torch's default generator gives 7 mask elements (7 random bytes of a word whose top bit
torch leaves 0) when p is a multiple of 1/256 (0.5 is), else 3 (three 16-bit pieces), so the
mask is as random (each element independently kept with probability exactly 1 - p) at a
seventh or a third of the draws. p that is no multiple of 1/65536 is rounded to the nearest one.

The output is the same as ``nn.Dropout``'s in distribution (kept elements scaled by 1 / (1 - p)),
not in value: the random stream differs. On CUDA the native fused dropout is used (it is fast
there). Like every random draw of the trainers it comes from torch's default generator, which they
seed per iteration, so a resumed run draws the same masks.
"""
import sys

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["WordMaskDropout", "bernoulli_keep_mask"]

# Which bytes / 16-bit pieces of an int64 hold its 63 random bits: all but the one with bit 63.
_BYTE_SLOTS = slice(0, 7) if sys.byteorder == "little" else slice(1, 8)
_HALF_SLOTS = slice(0, 3) if sys.byteorder == "little" else slice(1, 4)


def bernoulli_keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """A bool tensor of ``shape``, each element True with probability 1 - p (p rounded as above)."""
    n = 1
    for s in shape:
        n *= int(s)
    if p * 256 == round(p * 256):
        words = torch.empty((n + 6) // 7, dtype=torch.int64, device=device).random_()
        keep = words.view(torch.uint8).view(-1, 8)[:, _BYTE_SLOTS] >= int(round(p * 256))
    else:
        words = torch.empty((n + 2) // 3, dtype=torch.int64, device=device).random_()
        keep = words.view(torch.int16).view(-1, 4)[:, _HALF_SLOTS] >= int(round(p * 65536)) - 32768
    return keep.reshape(-1)[:n].view(tuple(shape))


class WordMaskDropout(nn.Dropout):
    """``nn.Dropout`` (same arguments and state) with the cheaper CPU mask above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.is_cuda:
            return F.dropout(x, self.p, self.training, self.inplace)
        if self.p == 1.0:
            return x * 0.0
        scale = bernoulli_keep_mask(x.shape, self.p, x.device).to(x.dtype) * (1.0 / (1.0 - self.p))
        return x.mul_(scale) if self.inplace else x * scale
