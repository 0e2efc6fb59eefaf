# Copyright (c) CaGNet-D2 contributors.
"""Measurements that place a zero-shot dataset in the regime of the paper's benchmarks
(``tools/analysis/dataset_realism.py`` prints them; the design notes of
:mod:`cagnet.data.synthetic_scenes` report them).

* :func:`train_probe`: is the information there? The pretrained trunk of a config, frozen, with
  the segmenter's head (ASPP-L + a 1x1 classifier) trained on the labels of *all* classes,
  unseen ones included: an upper bound for what a zero-shot method could recognise, so that a
  low zero-shot number means "not transferred", not "not visible".
* :func:`context_statistics`: do features of one class depend on the pixel's context? For the
  pixels of each thing class, the share of their (frozen, pretrained) feature variance that the
  context explains (eta^2: variance of the context-group means over the total), and how well a
  nearest-mean classifier tells the context from a single pixel's feature (balanced accuracy,
  2-fold), for three contexts: the scene's lighting, the position in the object (rim: within 1.5
  feature cells of the boundary, or interior) and the ground the object stands on.
* :func:`name_appearance_correlation`: do the names' vectors relate the classes as their looks
  do? Pearson and Spearman correlation, over class pairs, between the cosine of their word
  vectors and the cosine of their mean pretrained features.
"""
import logging
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone

from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
from ..evaluation.zero_shot_evaluator import load_label_map, zero_shot_metrics

__all__ = ["FrozenTrunkProbe", "train_probe", "trunk_features", "context_statistics", "name_appearance_correlation"]

logger = logging.getLogger(__name__)


class FrozenTrunkProbe(nn.Module):
    """E of a config with its pretrained trunk frozen (eval mode, no gradient); ASPP-L and a 1x1
    classifier over all classes are trained."""

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(cfg)
        DetectionCheckpointer(self).load(cfg.MODEL.WEIGHTS)
        for p in self.backbone.resnet.parameters():
            p.requires_grad_(False)
        channels = self.backbone.output_shape()["aspp"].channels
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1), False)
        self.stride = self.backbone.output_shape()["aspp"].stride

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        self.backbone.resnet.eval()
        with torch.no_grad():
            x = (images - self.pixel_mean) / self.pixel_std
            return self.backbone.resnet(x)[self.backbone._trunk_feature]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone.aspp(self.trunk(images)))


def _batch(records, mapper, lut):
    items = [mapper(r) for r in records]
    images = torch.stack([it["image"].float() for it in items])
    labels = torch.stack([torch.from_numpy(lut[load_label_map(r["sem_seg_file_name"], dtype=np.uint8)].astype(np.int64))
                          for r in records])
    return images, labels


def _feature_labels(labels: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def train_probe(cfg, train_name: str, test_name: str, iters: int = 600, batch_size: int = 16, lr: float = 3e-3,
                seed: int = 0) -> Dict[str, float]:
    """Trains :class:`FrozenTrunkProbe` on the full labels of ``train_name`` (no augmentation)
    and scores ``test_name`` with the zero-shot metrics; returns them (percent)."""
    meta = MetadataCatalog.get(test_name)
    k = len(meta.stuff_classes)
    ignore = getattr(meta, "ignore_label", 255)
    lut = dataset_label_lut(meta)
    torch.manual_seed(seed)
    model = FrozenTrunkProbe(cfg, k)
    mapper = ZeroShotSemSegDatasetMapper(cfg, is_train=False)
    train = DatasetCatalog.get(train_name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: (1 - i / iters) ** 0.9)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for it in range(iters):
        images, labels = _batch([train[i] for i in rng.integers(len(train), size=batch_size)], mapper, lut)
        logits = model(images)
        target = _feature_labels(labels, logits.shape[-2:])
        loss = F.cross_entropy(logits, target, ignore_index=ignore)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (it + 1) % 100 == 0:
            logger.info(f"probe: iteration {it + 1}/{iters}, loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    conf = np.zeros((k + 1, k + 1), np.int64)
    model.eval()
    test = DatasetCatalog.get(test_name)
    with torch.no_grad():
        for i in range(0, len(test), 32):
            images, labels = _batch(test[i:i + 32], mapper, lut)
            logits = F.interpolate(model(images), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits.argmax(1).numpy().reshape(-1)
            gt = labels.numpy().reshape(-1)
            gt = np.where(gt == ignore, k, gt)
            conf += np.bincount((k + 1) * pred + gt, minlength=conf.size).reshape(conf.shape)
    return zero_shot_metrics(conf, meta.seen_class_ids, meta.unseen_class_ids, list(meta.stuff_classes))


def trunk_features(model: FrozenTrunkProbe, images: torch.Tensor) -> torch.Tensor:
    """The frozen trunk's features (N, C, h, w)."""
    return model.trunk(images)


def _eta_squared(x: np.ndarray, groups: np.ndarray) -> float:
    """Share of the total variance of rows of x explained by the group means."""
    total = ((x - x.mean(0)) ** 2).sum()
    between = sum(((x[groups == g].mean(0) - x.mean(0)) ** 2).sum() * (groups == g).sum() for g in np.unique(groups))
    return float(between / max(total, 1e-12))


def _nearest_mean_accuracy(x: np.ndarray, groups: np.ndarray, rng) -> float:
    """Balanced accuracy of a nearest-group-mean classifier, 2-fold (half the pixels fit the means)."""
    order = rng.permutation(len(x))
    a, b = order[: len(x) // 2], order[len(x) // 2:]
    scores = []
    for fit, test in ((a, b), (b, a)):
        names = [g for g in np.unique(groups) if (groups[fit] == g).any() and (groups[test] == g).any()]
        if len(names) < 2:
            return float("nan")
        means = np.stack([x[fit][groups[fit] == g].mean(0) for g in names])
        keep = np.isin(groups[test], names)
        d = ((x[test][keep][:, None, :] - means[None]) ** 2).sum(-1)
        pred = np.asarray(names)[d.argmin(1)]
        truth = groups[test][keep]
        scores.append(np.mean([(pred[truth == g] == g).mean() for g in names]))
    return float(np.mean(scores))


def context_statistics(features: Dict[str, List[np.ndarray]], min_pixels: int = 40, seed: int = 0) -> Dict[str, Dict]:
    """``features[class]`` = rows of [feature..., lighting, rim, ground]; returns per context the
    mean over classes of eta^2 and of the nearest-mean balanced accuracy (with its chance level)."""
    rng = np.random.default_rng(seed)
    out = {}
    for j, context in enumerate(("lighting", "position in the object", "ground")):
        eta, acc, chance = [], [], []
        for rows in features.values():
            rows = np.concatenate(rows) if isinstance(rows, list) else rows
            if len(rows) < min_pixels:
                continue
            x, g = rows[:, :-3], rows[:, -3 + j]
            values, counts = np.unique(g, return_counts=True)
            values = values[counts >= 10]
            keep = np.isin(g, values)
            if len(values) < 2:
                continue
            eta.append(_eta_squared(x[keep], g[keep]))
            acc.append(_nearest_mean_accuracy(x[keep], g[keep], rng))
            chance.append(1.0 / len(values))
        out[context] = {
            "classes": len(eta),
            "variance_explained": float(np.mean(eta)) if eta else float("nan"),
            "nearest_mean_accuracy": float(np.nanmean(acc)) if acc else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan"),
        }
    return out


def name_appearance_correlation(class_vectors: np.ndarray, class_features: np.ndarray) -> Dict[str, float]:
    """Correlation over class pairs of word-vector cosine and mean-feature cosine."""
    from scipy.stats import pearsonr, spearmanr

    def cosines(m):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        s = m @ m.T
        return s[np.triu_indices(len(m), 1)]

    a, b = cosines(np.asarray(class_vectors, np.float64)), cosines(np.asarray(class_features, np.float64))
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}


def class_names_of(meta) -> Sequence[str]:
    return list(meta.stuff_classes)
