# Copyright (c) CaGNet-D2 contributors.
"""What CM and G compute for one image, as maps (paper Fig. 5 and Fig. 6).

* Scale map (Fig. 6): the context selector weighs the three dilated context maps per pixel;
  the map holds the index of the winning scale (arg-max of ``ContextOutput.scale_weights``).
* Reconstruction error (Fig. 5): per pixel ``||G(z, w_c) - x||^2`` (summed over the l channels),
  x the CM output, w_c the word embedding of the pixel's class (predicted, or given labels), for
  z = mu from CM (the pixel's contextual latent code) and for a random z ~ N(0, I). A G that uses
  context reconstructs x better from mu.

All maps are at feature resolution (one cell per ``stride`` x ``stride`` input pixels), cropped
to the cells that cover the image; :func:`upsample_to_image` brings one to the input size.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureMaps", "context_scale_map", "reconstruction_error", "compute_feature_maps", "upsample_to_image"]


@dataclass
class FeatureMaps:
    logits: torch.Tensor  # (K, h, w) class logits at feature resolution
    labels: torch.Tensor  # (h, w) class of each cell used for w_c; ignore_value where none
    scale_weights: torch.Tensor  # (S, h, w) context selector output
    scale_map: torch.Tensor  # (h, w) arg-max scale index 0..S-1
    error_mu: torch.Tensor  # (h, w) ||G(mu, w_c) - x||^2, NaN where the label is ignored
    error_random: torch.Tensor  # (h, w) ||G(z, w_c) - x||^2 with z ~ N(0, I)
    dilations: Tuple[int, ...]  # dilation of each context scale
    stride: int  # input pixels per feature cell
    image_size: Tuple[int, int]  # (H, W) of the input
    labels_from: str  # "prediction" or "ground truth"


def context_scale_map(scale_weights: torch.Tensor) -> torch.Tensor:
    """(..., S, h, w) selector weights -> (..., h, w) index of the largest weight."""
    return scale_weights.argmax(dim=-3)


def reconstruction_error(
    generator: nn.Module, x: torch.Tensor, z: torch.Tensor, class_embeddings: torch.Tensor,
    labels: torch.Tensor, ignore_value: int = 255,
) -> torch.Tensor:
    """Per-pixel squared L2 distance between G(z, w_label) and x.

    Args:
        x, z: (N, l, h, w) real features and latent codes.
        class_embeddings: (K, d).
        labels: (N, h, w) class indices; values outside 0..K-1 (e.g. ``ignore_value``) give NaN.
    Returns:
        (N, h, w) float tensor.
    """
    k = class_embeddings.shape[0]
    valid = (labels >= 0) & (labels < k) & (labels != ignore_value)
    w = class_embeddings[labels.clamp(0, k - 1)].permute(0, 3, 1, 2)
    fake = generator(z, w.to(z.dtype))
    err = ((fake - x) ** 2).sum(dim=1)
    return torch.where(valid, err, torch.full_like(err, float("nan")))


@torch.no_grad()
def compute_feature_maps(model: nn.Module, image: torch.Tensor, label: Optional[torch.Tensor] = None,
                         seed: int = 0) -> FeatureMaps:
    """The maps of one image.

    Args:
        model: a CaGNet model (put in eval mode: Z = mu, no dropout).
        image: (3, H, W) in the model's input format (0..255), as the dataset mapper gives it.
        label: optional (H, W) class indices of the model's class list (255 = ignore); default:
            the model's prediction at feature resolution.
        seed: seed of the random latent code.
    """
    model.eval()
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)["aspp"]
    ctx = model.contextual_module(features, sample=False)
    logits = model.heads.classify(ctx.x)
    stride = int(model.backbone.output_shape()["aspp"].stride)
    if label is not None:
        label = torch.as_tensor(label, dtype=torch.long)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"Label of shape {tuple(label.shape)} for an image of size {tuple(image.shape[-2:])}")
        label = torch.where((label >= 0) & (label < model.num_classes), label, torch.full_like(label, model.ignore_value))
        labels = model.feature_labels([{"sem_seg": label}], images.tensor.shape[-2:], features.shape[-2:])
    else:
        labels = logits.argmax(dim=1)
    g = torch.Generator(device=ctx.mu.device).manual_seed(seed)
    z_random = torch.randn(ctx.mu.shape, generator=g, device=ctx.mu.device, dtype=ctx.mu.dtype)
    args = (model.class_embeddings, labels, model.ignore_value)
    error_mu = reconstruction_error(model.generator, ctx.x, ctx.mu, *args)
    error_random = reconstruction_error(model.generator, ctx.x, z_random, *args)
    h, w = image.shape[-2:]
    fh, fw = -(-h // stride), -(-w // stride)  # cells covering the image

    def crop(t):
        return t[0, ..., :fh, :fw].cpu()

    return FeatureMaps(
        logits=crop(logits),
        labels=crop(labels),
        scale_weights=crop(ctx.scale_weights),
        scale_map=crop(context_scale_map(ctx.scale_weights)),
        error_mu=crop(error_mu),
        error_random=crop(error_random),
        dilations=tuple(int(c.dilation[0]) for c in model.contextual_module.context_convs),
        stride=int(stride),
        image_size=(int(h), int(w)),
        labels_from="ground truth" if label is not None else "prediction",
    )


def upsample_to_image(cell_map, stride: int, image_size: Tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a (h, w) feature-resolution map to the (H, W) input."""
    a = np.asarray(cell_map)
    a = np.repeat(np.repeat(a, stride, axis=0), stride, axis=1)
    return a[: image_size[0], : image_size[1]]
