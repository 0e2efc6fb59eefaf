# Copyright (c) CaGNet-D2 contributors.
"""Loss functions of CaGNet. All take pixel lists and return a scalar that is 0 (and still
connected to the graph) when there are no pixels, so that a batch without labelled pixels does
not produce NaN or desynchronise distributed workers. Inputs are cast to float32, so that the
losses are exact under bfloat16 autocast (SOLVER.AMP.ENABLED)."""
from typing import Optional

import torch
from torch.nn import functional as F

__all__ = [
    "kl_divergence",
    "reconstruction_loss",
    "mmd_loss",
    "label_run_mmd_loss",
    "label_runs",
    "classwise_mmd_loss",
    "median_distance",
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


def classwise_mmd_loss(
    real: torch.Tensor,
    labels: torch.Tensor,
    generate,
    sigmas,
    max_pixels_per_class: int = 0,
) -> torch.Tensor:
    """Mean over the classes present in ``labels`` of MMD(real pixels of c, generated pixels of c).

    ``generate(labels)`` returns generated features (P', l) for pixel labels (P',). Each class
    uses at most ``max_pixels_per_class`` of its real pixels (a random subset; 0: all).
    """
    classes = labels.unique()
    if classes.numel() == 0:
        return _empty(real)
    picked = []
    for c in classes:
        idx = (labels == c).nonzero()[:, 0]
        if 0 < max_pixels_per_class < idx.numel():
            idx = idx[torch.randperm(idx.numel(), device=idx.device)[:max_pixels_per_class]]
        picked.append(idx)
    fake = generate(torch.cat([labels[i] for i in picked]))
    losses, start = [], 0
    for idx in picked:
        n = idx.numel()
        losses.append(mmd_loss(fake[start:start + n], real[idx], sigmas=tuple(sigmas)))
        start += n
    return torch.stack(losses).mean()


@torch.no_grad()
def median_distance(x: torch.Tensor, max_pixels: int = 512) -> float:
    """Median pairwise L2 distance of (a random subset of) the rows of ``x``: the scale of a
    feature space, for kernel bandwidths that follow it (the "median heuristic")."""
    if x.shape[0] > max_pixels:
        x = x[torch.randperm(x.shape[0], device=x.device)[:max_pixels]]
    if x.shape[0] < 2:
        return 1.0
    d = torch.pdist(x.float())
    return max(float(d.median()), 1e-6)


REFERENCE_MMD_BANDWIDTHS = (2.0, 5.0, 10.0, 20.0, 40.0, 60.0)


def label_runs(labels: torch.Tensor) -> torch.Tensor:
    """Run index of each entry of a 1-D label sequence: a new run starts wherever the label
    differs from the previous entry (raster order of the labelled pixels)."""
    if labels.numel() == 0:
        return labels.new_zeros(0)
    starts = torch.ones_like(labels, dtype=torch.long)
    starts[1:] = (labels[1:] != labels[:-1]).long()
    return starts.cumsum(0) - 1


def label_run_mmd_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                       bandwidths=REFERENCE_MMD_BANDWIDTHS, max_chunk: int = 128) -> torch.Tensor:
    """The reference code's content loss (its ``MMDLoss``; not in the paper): the labelled pixels,
    in raster order, are cut into runs of consecutive equal labels; per run, the square root of
    half the biased MMD^2 between the run's generated and real features, summed over Gaussian
    kernels exp(-||a - b||^2 / (2 s)) for s in ``bandwidths`` (s acts as a variance there);
    averaged over the runs. fake, real: (P, l); labels: (P,).

    Runs are processed in chunks of at most ``max_chunk`` pixels (whole runs), each with one
    kernel matrix masked to same-run pairs, instead of one small matrix per run."""
    if fake.numel() == 0:
        return _empty(fake, real)
    fake, real = fake.float(), real.float()
    runs = label_runs(labels)
    num_runs = int(runs[-1]) + 1
    sizes = torch.bincount(runs, minlength=num_runs)
    ends = sizes.cumsum(0).tolist()
    mmd2 = []
    begin, first_run = 0, 0
    for r, end in enumerate(ends):
        last = r == num_runs - 1
        if not last and ends[r + 1] - begin <= max_chunk:
            continue  # the next run still fits into this chunk
        run = runs[begin:end] - first_run
        n = run.numel()
        x = torch.cat([fake[begin:end], real[begin:end]])
        rid = torch.cat([run, run])
        sign = torch.cat([x.new_ones(n), -x.new_ones(n)])
        sq = x.pow(2).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)  # no sqrt: finite gradients at 0
        k = sum(torch.exp(-d2 / (2.0 * s)) for s in bandwidths)
        same = rid[:, None] == rid[None, :]
        weighted = (k * same * (sign[:, None] * sign[None, :])).sum(dim=1)
        per_run = torch.zeros(r + 1 - first_run, device=x.device).index_add(0, rid, weighted)
        count = sizes[first_run:r + 1].to(x.dtype)
        mmd2.append(per_run / count.pow(2))
        begin, first_run = end, r + 1
    mmd2 = torch.cat(mmd2).clamp_min(0.0)
    # sqrt(0.5 MMD^2): the reference's scale matrix weights each pair by 1/(2 n^2) for equal sizes;
    # a run with no discrepancy contributes 0 (and no NaN gradient).
    half = 0.5 * mmd2
    safe = torch.where(half > 0, half, torch.ones_like(half))
    return torch.where(half > 0, safe.sqrt(), torch.zeros_like(half)).mean()


REC_NORMALIZATIONS = ("channel_mean", "channel_sum")


def reconstruction_loss(fake: torch.Tensor, real: torch.Tensor, kind: str = "l2",
                        normalization: str = "channel_sum", labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_REC between generated and real features of the same pixels, (P, l) each.

    "l2": the squared L2 distance ||x - G(z, w)||^2 of each pixel, averaged over the P pixels
    (the same per-pixel normalisation as the cross-entropy), with ``normalization``

    * "channel_sum": sum_c (x_c - G_c)^2 per pixel, as in the paper's Eq. 1;
    * "channel_mean": mean_c (x_c - G_c)^2 per pixel, i.e. ``F.mse_loss``: the channel_sum
      value divided by l (so lambda1 acts as lambda1 / l).

    "mmd": the reference code's content loss, :func:`label_run_mmd_loss` (needs ``labels``;
    ``normalization`` does not apply).
    """
    if normalization not in REC_NORMALIZATIONS:
        raise ValueError(f"MODEL.CAGNET.REC_NORMALIZATION must be one of {REC_NORMALIZATIONS}, got {normalization!r}")
    if kind == "l2":
        if fake.numel() == 0:
            return _empty(fake, real)
        fake, real = fake.float(), real.float()
        squared = (fake - real).pow(2)
        if normalization == "channel_mean":
            return squared.mean()
        return squared.sum(dim=1).mean()
    if kind == "mmd":
        if labels is None:
            raise ValueError("REC_LOSS 'mmd' needs the pixels' labels (it compares runs of equal labels)")
        return label_run_mmd_loss(fake, real, labels)
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
