# Copyright (c) CaGNet-D2 contributors.
"""Does G's output stand for the class it is asked for? Measured on real pixels.

The finetuning step trains C on G(z ~ N(0, I), w) alone, so it only helps if those features look
like the real features of class w to a classifier trained on real features. For labelled pixels
of seen classes (real feature x, CM's latent mean mu, class y) this module reports how often the
model's own C assigns y to

* x itself (the reference point);
* G(z, w_y) with z ~ N(0, I): the finetuning step's features;
* G(mu, w_y): the training step's reconstruction from the pixel's own latent code;
* G(mu', w_y) with mu' the latent code of a pixel of *another* class: if this is low, G reads
  the class from the latent code and ignores the word embedding,

and the mean squared reconstruction error ||G(z, w_y) - x||^2 for z = mu and z ~ N(0, I).
"""
from typing import Dict, Tuple

import torch

from .feature_diagnostics import collect_real_features

__all__ = ["collect_pixel_features", "generator_probe"]


@torch.no_grad()
def collect_pixel_features(cfg, model, dataset: str, count: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CM outputs X (P, l), latent means mu (P, l; zeros without CM) and class indices of
    ``model`` (P,) of the labelled feature pixels of the first ``count`` images of ``dataset``
    (classes matched by name; classes the model lacks are ignored)."""
    real, labels, latent = collect_real_features(cfg, model, dataset, count)
    mu = latent[:, : real.shape[1]] if latent is not None else torch.zeros_like(real)
    return real, mu, labels


@torch.no_grad()
def generator_probe(model, real: torch.Tensor, mu: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> Dict:
    """``real`` (P, l) CM outputs X, ``mu`` (P, l) latent means, ``labels`` (P,) class indices of
    ``model`` (a CaGNet); only pixels of seen classes count. Returns accuracies in [0, 1] and
    errors (per pixel, summed over channels), plus the pixel count."""
    seen = torch.isin(labels, model.seen_ids)
    real, mu, labels = real[seen], mu[seen], labels[seen]
    n = labels.numel()
    if n == 0:
        raise ValueError("No labelled pixels of seen classes to probe the generator with")
    gen = torch.Generator(device=real.device).manual_seed(seed)
    w = model.class_embeddings[labels]

    def accuracy(features):
        return float((model.heads.classify(features).argmax(1) == labels).float().mean())

    prior = model.generator(torch.randn(mu.shape, generator=gen, device=mu.device), w)
    own = model.generator(mu, w)
    # another pixel's code: a random permutation, keeping only pairs of different classes
    perm = torch.randperm(n, generator=gen, device=labels.device)
    other = labels[perm] != labels
    if other.any():
        crossed = model.generator(mu[perm][other], w[other])
        other_acc = float((model.heads.classify(crossed).argmax(1) == labels[other]).float().mean())
    else:
        other_acc = float("nan")
    return {
        "pixels": int(n),
        "acc_real": accuracy(real),
        "acc_generated_prior": accuracy(prior),
        "acc_generated_own_code": accuracy(own),
        "acc_generated_other_code": other_acc,
        "rec_error_own_code": float((own - real).pow(2).sum(1).mean()),
        "rec_error_prior": float((prior - real).pow(2).sum(1).mean()),
    }
