# Copyright (c) CaGNet-D2 contributors.
"""Calibration of the seen-class scores: per-pixel statistics, the seen/unseen accuracy curve and
its area (AUSUC, Chao et al., ECCV 2016), and the choice of SPNet-c's gamma.

Subtracting gamma from every seen score changes a pixel's prediction only between its best seen
and its best unseen class, so four numbers per labelled pixel determine the prediction for every
gamma: ``margin`` = best seen score - best unseen score, the best seen class, the best unseen class
and the ground truth. The pixel is predicted as its best seen class iff ``margin >= gamma``.

The curve: as gamma sweeps from -inf to +inf, the mean per-class accuracy of the seen classes
(over seen ground-truth pixels, predictions among all classes) falls from its maximum to 0 and that
of the unseen classes rises from 0 to its maximum. AUSUC is the area under seen accuracy as a
function of unseen accuracy (trapezoids through every distinct operating point), in [0, 1].
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .zero_shot_evaluator import load_label_map, zero_shot_metrics

__all__ = [
    "ScoreStatistics",
    "pixel_statistics",
    "calibration_curve",
    "area_under_curve",
    "collect_score_statistics",
    "select_calibration",
]


@dataclass
class ScoreStatistics:
    """Per labelled pixel: margin (float32), best seen / best unseen / ground-truth class."""

    margin: np.ndarray
    best_seen: np.ndarray
    best_unseen: np.ndarray
    gt: np.ndarray
    num_classes: int
    seen_ids: Tuple[int, ...]
    unseen_ids: Tuple[int, ...]

    @classmethod
    def concatenate(cls, parts: Sequence["ScoreStatistics"]) -> "ScoreStatistics":
        p = parts[0]
        return cls(*(np.concatenate([getattr(x, k) for x in parts]) for k in ("margin", "best_seen", "best_unseen", "gt")),
                   p.num_classes, p.seen_ids, p.unseen_ids)

    def predictions(self, gamma: float) -> np.ndarray:
        return np.where(self.margin >= gamma, self.best_seen, self.best_unseen)

    def confusion(self, gamma: float) -> np.ndarray:
        """(K+1) x (K+1), rows prediction, columns ground truth (the evaluator's layout)."""
        k = self.num_classes
        flat = (k + 1) * self.predictions(gamma).astype(np.int64) + self.gt.astype(np.int64)
        return np.bincount(flat, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)

    def metrics(self, gamma: float, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        return zero_shot_metrics(self.confusion(gamma), self.seen_ids, self.unseen_ids, class_names)

    def save(self, path: str) -> None:
        np.savez_compressed(
            path, margin=self.margin, best_seen=self.best_seen, best_unseen=self.best_unseen, gt=self.gt,
            num_classes=self.num_classes, seen_ids=np.asarray(self.seen_ids), unseen_ids=np.asarray(self.unseen_ids),
        )

    @classmethod
    def load(cls, path: str) -> "ScoreStatistics":
        with np.load(path) as d:
            return cls(d["margin"], d["best_seen"], d["best_unseen"], d["gt"], int(d["num_classes"]),
                       tuple(int(i) for i in d["seen_ids"]), tuple(int(i) for i in d["unseen_ids"]))


def pixel_statistics(logits: torch.Tensor, gt: np.ndarray, seen_ids: Sequence[int], unseen_ids: Sequence[int],
                     ignore_label: int = 255) -> ScoreStatistics:
    """Statistics of the labelled pixels of one image from its uncalibrated logits (K, H, W).
    Classes in neither group are left out of both argmaxes; pixels of such classes (or ignored
    ones) are dropped."""
    k = logits.shape[0]
    seen = torch.as_tensor(list(seen_ids), dtype=torch.long, device=logits.device)
    unseen = torch.as_tensor(list(unseen_ids), dtype=torch.long, device=logits.device)
    s_val, s_arg = logits.index_select(0, seen).max(dim=0)
    u_val, u_arg = logits.index_select(0, unseen).max(dim=0)
    in_groups = np.zeros(max(k, ignore_label + 1), dtype=bool)
    in_groups[list(seen_ids) + list(unseen_ids)] = True
    gt = np.asarray(gt, dtype=np.int64)
    keep = (gt != ignore_label) & in_groups[np.clip(gt, 0, len(in_groups) - 1)]
    keep_t = torch.from_numpy(keep).to(logits.device)
    return ScoreStatistics(
        margin=(s_val - u_val)[keep_t].float().cpu().numpy(),
        best_seen=seen[s_arg][keep_t].cpu().numpy().astype(np.int16),
        best_unseen=unseen[u_arg][keep_t].cpu().numpy().astype(np.int16),
        gt=gt[keep].astype(np.int16),
        num_classes=k,
        seen_ids=tuple(int(i) for i in seen_ids),
        unseen_ids=tuple(int(i) for i in unseen_ids),
    )


def calibration_curve(stats: ScoreStatistics) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gamma, seen accuracy, unseen accuracy) at every distinct operating point, gamma
    increasing; accuracies are mean per-class accuracies in [0, 1] over the classes present."""
    k = stats.num_classes
    gt = stats.gt.astype(np.int64)
    counts = np.bincount(gt, minlength=k)
    seen, unseen = np.asarray(stats.seen_ids), np.asarray(stats.unseen_ids)
    n_seen, n_unseen = max((counts[seen] > 0).sum(), 1), max((counts[unseen] > 0).sum(), 1)
    is_seen = np.zeros(k, dtype=bool)
    is_seen[seen] = True
    per_pixel = 1.0 / np.maximum(counts[gt], 1)
    # A seen pixel is right iff its best seen class is its class and margin >= gamma; an unseen
    # pixel iff its best unseen class is its class and margin < gamma.
    w_seen = np.where(is_seen[gt] & (stats.best_seen == gt), per_pixel / n_seen, 0.0)
    w_unseen = np.where(~is_seen[gt] & (stats.best_unseen == gt), per_pixel / n_unseen, 0.0)
    order = np.argsort(stats.margin, kind="stable")
    m = stats.margin[order].astype(np.float64)
    cum_seen = np.concatenate([[0.0], np.cumsum(w_seen[order])])
    cum_unseen = np.concatenate([[0.0], np.cumsum(w_unseen[order])])
    values = np.unique(m)
    below = np.searchsorted(m, values, side="left")  # pixels with margin < value
    gammas = np.concatenate([values, [np.inf]])
    acc_seen = np.concatenate([cum_seen[-1] - cum_seen[below], [0.0]])
    acc_unseen = np.concatenate([cum_unseen[below], [cum_unseen[-1]]])
    return gammas, acc_seen, acc_unseen


def area_under_curve(acc_unseen: np.ndarray, acc_seen: np.ndarray) -> float:
    """Area under seen accuracy as a function of unseen accuracy (trapezoids, points in order)."""
    x, y = np.asarray(acc_unseen, dtype=np.float64), np.asarray(acc_seen, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def collect_score_statistics(model, records: List[Dict], mapper, label_lut: np.ndarray, seen_ids: Sequence[int],
                             unseen_ids: Sequence[int], ignore_label: int = 255, max_pixels_per_image: int = 0,
                             seed: int = 0, batch_size: int = 1) -> ScoreStatistics:
    """Runs ``model`` (uncalibrated: a ``calibration`` buffer is zeroed meanwhile) on the records
    and gathers :func:`pixel_statistics`; ground truth is the label file through ``label_lut``.
    ``max_pixels_per_image`` > 0 keeps a random subset of each image's labelled pixels."""
    from detectron2.evaluation.evaluator import inference_context

    rng = np.random.default_rng(seed)
    saved = getattr(model, "calibration", None)
    saved = saved.clone() if saved is not None else None
    parts = []
    try:
        if saved is not None:
            model.calibration.zero_()
        with inference_context(model), torch.no_grad():
            for start in range(0, len(records), batch_size):
                chunk = records[start:start + batch_size]
                outputs = model([mapper(r) for r in chunk])
                for record, out in zip(chunk, outputs):
                    gt = label_lut[load_label_map(record["sem_seg_file_name"], dtype=np.uint8)]
                    if gt.shape != tuple(out["sem_seg"].shape[-2:]):
                        raise ValueError(f"{record['sem_seg_file_name']}: {gt.shape} vs {tuple(out['sem_seg'].shape)}")
                    stats = pixel_statistics(out["sem_seg"], gt, seen_ids, unseen_ids, ignore_label)
                    if 0 < max_pixels_per_image < stats.gt.size:
                        pick = np.sort(rng.choice(stats.gt.size, max_pixels_per_image, replace=False))
                        stats = ScoreStatistics(stats.margin[pick], stats.best_seen[pick], stats.best_unseen[pick],
                                                stats.gt[pick], stats.num_classes, stats.seen_ids, stats.unseen_ids)
                    parts.append(stats)
    finally:
        if saved is not None:
            model.calibration.copy_(saved)
    return ScoreStatistics.concatenate(parts)


def select_calibration(model, records: List[Dict], cfg, *, label_lut: np.ndarray, seen_ids: Sequence[int],
                       held_out_ids: Sequence[int], ignored_ids: Sequence[int] = (), num_candidates: int = 201,
                       max_pixels_per_image: int = 10000) -> Dict:
    """SPNet-c's gamma: the candidate that maximises the hIoU between ``seen_ids`` and the
    ``held_out_ids`` (treated as unseen) of a network trained without the latter, on ``records``
    (training images, labels through ``label_lut``; ``ignored_ids`` -- the real unseen classes --
    take part neither as ground truth nor as predictions). Candidates are quantiles of the margins
    and 0; ties go to the smallest |gamma|."""
    from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper

    ignore = int(getattr(model, "ignore_value", 255))
    drop = np.arange(256, dtype=np.uint8)
    drop[list(ignored_ids)] = ignore
    lut = drop[label_lut]
    stats = collect_score_statistics(
        model, records, ZeroShotSemSegDatasetMapper(cfg, is_train=False), lut, seen_ids, held_out_ids,
        ignore_label=ignore, max_pixels_per_image=max_pixels_per_image, seed=max(cfg.SEED, 0),
    )
    candidates = np.unique(np.concatenate([np.quantile(stats.margin, np.linspace(0, 1, num_candidates)), [0.0]]))
    scores = [stats.metrics(float(g)) for g in candidates]
    hiou = np.array([s["hIoU"] for s in scores])
    best = max(range(len(candidates)), key=lambda i: (round(hiou[i], 9), -abs(candidates[i])))
    return {
        "gamma": float(candidates[best]),
        "hIoU": float(hiou[best]),
        "mIoU-seen": float(scores[best]["mIoU-seen"]),
        "mIoU-unseen": float(scores[best]["mIoU-unseen"]),
        "hIoU_at_0": float(stats.metrics(0.0)["hIoU"]),
        "num_images": len(records),
        "num_pixels": int(stats.gt.size),
        "candidates": [float(c) for c in candidates],
        "candidate_hIoU": [float(h) for h in hiou],
    }
