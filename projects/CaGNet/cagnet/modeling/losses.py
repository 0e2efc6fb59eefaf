# Copyright (c) CaGNet-D2 contributors.
"""Loss functions of CaGNet. All take pixel lists and return a scalar that is 0 (and still
connected to the graph) when there are no pixels, so that a batch without labelled pixels does
not produce NaN or desynchronise distributed workers. Inputs are cast to float32, so that the
losses are exact under bfloat16 autocast (SOLVER.AMP.ENABLED)."""
import torch
from torch.nn import functional as F

__all__ = [
    "kl_divergence",
    "reconstruction_loss",
    "mmd_loss",
    "adversarial_loss",
    "classification_loss",
]


def _empty(*tensors: torch.Tensor) -> torch.Tensor:
    return sum(t.sum() for t in tensors) * 0.0


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), averaged over pixels and channels. mu, logvar: (P, l)."""
    if mu.numel() == 0:
        return _empty(mu, logvar)
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def mmd_loss(x: torch.Tensor, y: torch.Tensor, sigmas=(2, 5, 10, 20, 40, 80)) -> torch.Tensor:
    """Maximum mean discrepancy with a sum of Gaussian kernels (GMMN, ZS3Net; reference code)."""
    if x.numel() == 0 or y.numel() == 0:
        return _empty(x, y)
    xy = torch.cat([x.float(), y.float()], dim=0)
    d2 = torch.cdist(xy, xy).pow(2)
    k = sum(torch.exp(-d2 / (2.0 * s * s)) for s in sigmas)
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


def reconstruction_loss(fake: torch.Tensor, real: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """L_REC between generated and real features of the same pixels, (P, l) each.

    "l2": squared L2 distance per pixel, averaged over pixels and channels (paper).
    "mmd": MMD between the two sets (reference code).
    """
    if kind == "l2":
        if fake.numel() == 0:
            return _empty(fake, real)
        return F.mse_loss(fake.float(), real.float())
    if kind == "mmd":
        return mmd_loss(fake, real)
    raise ValueError(f"MODEL.CAGNET.REC_LOSS must be 'l2' or 'mmd', got {kind!r}")


def adversarial_loss(logits: torch.Tensor, target: float, kind: str = "lsgan") -> torch.Tensor:
    """Distance of D's sigmoid score to ``target`` (1 = real, 0 = generated).

    "lsgan": least squares (paper); "l1": absolute difference (reference code).
    """
    if logits.numel() == 0:
        return _empty(logits)
    score = torch.sigmoid(logits.float())
    if kind == "lsgan":
        return (score - target).pow(2).mean()
    if kind == "l1":
        return (score - target).abs().mean()
    raise ValueError(f"MODEL.CAGNET.ADV_LOSS must be 'lsgan' or 'l1', got {kind!r}")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of pixel logits (P, K) against labels (P,)."""
    if logits.numel() == 0:
        return _empty(logits)
    return F.cross_entropy(logits.float(), labels)
