# Copyright (c) CaGNet-D2 contributors.
"""Calibration of the seen-class scores: statistics that give the prediction for every gamma, the
seen/unseen accuracy curve and its area (AUSUC, Chao et al., ECCV 2016), and SPNet-c's gamma.

Subtracting gamma from every seen score changes a pixel's prediction only between its best seen
and its best unseen class, so four numbers per labelled pixel determine the prediction for every
gamma: ``margin`` = best seen score - best unseen score, the best seen class, the best unseen class
and the ground truth. The pixel is predicted as its best seen class iff ``margin >= gamma``.

Two forms of these statistics:

* :class:`ScoreStatistics` keeps the four numbers per pixel (10 bytes a pixel): exact at every
  gamma, but ~15 GB on COCO-stuff's val set (1.5e9 labelled pixels). For tests and small sets.
* :class:`ScoreHistogram` (what the tools use) keeps, per margin bin and class, how many pixels
  would be right and how many predicted as that class if seen / if unseen: 4 arrays of
  (bins x K) counts, whatever the number of pixels (~3.5k bins: 19 MB at K = 171). Every metric of
  Table 1 depends on the per-class true positives, ground-truth and predicted pixels only, so at a
  gamma that is a bin edge the metrics are exact. The edges are a symmetric log grid (0, and
  +-10^(k/250) for |margin| in [1e-3, 1e4]: neighbouring edges 0.9% apart) plus any edges asked for
  (the model's own gamma, the candidates of SPNet-c's selection); another gamma is rounded to the
  nearest edge. AUSUC comes from the operating points at the edges (the exact curve has one at
  every distinct margin): within 0.005 points of the exact area on the built-in data (measured by
  ``tools/analysis/check_calibration_statistics.py``).

The curve: as gamma sweeps from -inf to +inf, the mean per-class accuracy of the seen classes
(over seen ground-truth pixels, predictions among all classes) falls from its maximum to 0 and that
of the unseen classes rises from 0 to its maximum. AUSUC is the area under seen accuracy as a
function of unseen accuracy (trapezoids through the operating points), in [0, 1].
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .zero_shot_evaluator import load_label_map, zero_shot_metrics, zero_shot_metrics_from_counts

__all__ = [
    "ScoreStatistics",
    "ScoreHistogram",
    "margin_edges",
    "pixel_statistics",
    "calibration_curve",
    "area_under_curve",
    "collect_score_statistics",
    "load_score_statistics",
    "candidate_gammas",
    "select_calibration",
]

# The margin grid of ScoreHistogram: 0 and +-10^(k / EDGES_PER_DECADE) for |margin| in
# [10^MARGIN_DECADES[0], 10^MARGIN_DECADES[1]].
EDGES_PER_DECADE = 250
MARGIN_DECADES = (-3, 4)


def margin_edges(extra: Sequence[float] = (), per_decade: int = EDGES_PER_DECADE,
                 decades: Tuple[int, int] = MARGIN_DECADES) -> np.ndarray:
    """Sorted bin edges (float32 values, as float64): the log grid, 0, and ``extra``."""
    k = np.arange(decades[0] * per_decade, decades[1] * per_decade + 1)
    pos = 10.0 ** (k / per_decade)
    edges = np.concatenate([-pos[::-1], [0.0], pos, np.asarray(list(extra), dtype=np.float64)])
    edges = edges[np.isfinite(edges)]
    # float32 values: a float32 margin m is on the seen side of edge e iff m >= float32(e), as in
    # the per-pixel comparison.
    return np.unique(edges.astype(np.float32)).astype(np.float64)


@dataclass
class ScoreStatistics:
    """Per labelled pixel: margin (float32), best seen / best unseen / ground-truth class. Exact,
    10 bytes a pixel; :class:`ScoreHistogram` is the bounded form."""

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

    @property
    def num_pixels(self) -> int:
        return int(self.gt.size)

    def subset(self, pick: np.ndarray) -> "ScoreStatistics":
        return ScoreStatistics(self.margin[pick], self.best_seen[pick], self.best_unseen[pick], self.gt[pick],
                               self.num_classes, self.seen_ids, self.unseen_ids)

    def predictions(self, gamma: float) -> np.ndarray:
        return np.where(self.margin >= gamma, self.best_seen, self.best_unseen)

    def confusion(self, gamma: float) -> np.ndarray:
        """(K+1) x (K+1), rows prediction, columns ground truth (the evaluator's layout)."""
        k = self.num_classes
        flat = (k + 1) * self.predictions(gamma).astype(np.int64) + self.gt.astype(np.int64)
        return np.bincount(flat, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)

    def metrics(self, gamma: float, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        return zero_shot_metrics(self.confusion(gamma), self.seen_ids, self.unseen_ids, class_names)

    def margin_quantiles(self, q: np.ndarray) -> np.ndarray:
        return np.quantile(self.margin, q)

    def curve(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gamma, seen accuracy, unseen accuracy) at every distinct operating point, gamma
        increasing; accuracies are mean per-class accuracies in [0, 1] over the classes present."""
        k = self.num_classes
        gt = self.gt.astype(np.int64)
        counts = np.bincount(gt, minlength=k)
        seen, unseen = np.asarray(self.seen_ids), np.asarray(self.unseen_ids)
        n_seen, n_unseen = max((counts[seen] > 0).sum(), 1), max((counts[unseen] > 0).sum(), 1)
        is_seen = np.zeros(k, dtype=bool)
        is_seen[seen] = True
        per_pixel = 1.0 / np.maximum(counts[gt], 1)
        # A seen pixel is right iff its best seen class is its class and margin >= gamma; an unseen
        # pixel iff its best unseen class is its class and margin < gamma.
        w_seen = np.where(is_seen[gt] & (self.best_seen == gt), per_pixel / n_seen, 0.0)
        w_unseen = np.where(~is_seen[gt] & (self.best_unseen == gt), per_pixel / n_unseen, 0.0)
        order = np.argsort(self.margin, kind="stable")
        m = self.margin[order].astype(np.float64)
        cum_seen = np.concatenate([[0.0], np.cumsum(w_seen[order])])
        cum_unseen = np.concatenate([[0.0], np.cumsum(w_unseen[order])])
        values = np.unique(m)
        below = np.searchsorted(m, values, side="left")  # pixels with margin < value
        gammas = np.concatenate([values, [np.inf]])
        acc_seen = np.concatenate([cum_seen[-1] - cum_seen[below], [0.0]])
        acc_unseen = np.concatenate([cum_unseen[below], [cum_unseen[-1]]])
        return gammas, acc_seen, acc_unseen

    def histogram(self, extra_edges: Sequence[float] = ()) -> "ScoreHistogram":
        hist = ScoreHistogram.empty(self.num_classes, self.seen_ids, self.unseen_ids, extra_edges)
        hist.add(self)
        return hist

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


_COUNTS = ("tp_seen", "tp_unseen", "pred_seen", "pred_unseen")


@dataclass
class ScoreHistogram:
    """The statistics in bounded memory. Bin b holds the pixels with ``edges[b-1] <= margin <
    edges[b]`` (bin 0: below the first edge, the last bin: from the last edge on), so at gamma =
    ``edges[j]`` the pixels of bins > j are predicted as their best seen class. Per bin and class
    (B x K, int64): ``tp_seen`` pixels of that class whose best seen class is right, ``tp_unseen``
    whose best unseen class is right, ``pred_seen`` pixels whose best seen class it is,
    ``pred_unseen`` whose best unseen class it is; ``gt_count`` (K,) labelled pixels per class."""

    edges: np.ndarray
    tp_seen: np.ndarray
    tp_unseen: np.ndarray
    pred_seen: np.ndarray
    pred_unseen: np.ndarray
    gt_count: np.ndarray
    num_classes: int
    seen_ids: Tuple[int, ...]
    unseen_ids: Tuple[int, ...]
    _cumulative: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, num_classes: int, seen_ids: Sequence[int], unseen_ids: Sequence[int],
              extra_edges: Sequence[float] = ()) -> "ScoreHistogram":
        edges = margin_edges(extra_edges)
        shape = (edges.size + 1, num_classes)
        return cls(edges, *(np.zeros(shape, dtype=np.int64) for _ in _COUNTS), np.zeros(num_classes, dtype=np.int64),
                   num_classes, tuple(int(i) for i in seen_ids), tuple(int(i) for i in unseen_ids))

    @property
    def num_pixels(self) -> int:
        return int(self.gt_count.sum())

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in _COUNTS) + self.edges.nbytes + self.gt_count.nbytes

    def add(self, stats: ScoreStatistics) -> None:
        """Count the pixels of per-pixel statistics (e.g. one image's)."""
        k = self.num_classes
        bins = np.searchsorted(self.edges, stats.margin.astype(np.float64), side="right")
        base = bins * k
        gt = stats.gt.astype(np.int64)
        bs, bu = stats.best_seen.astype(np.int64), stats.best_unseen.astype(np.int64)
        n = self.tp_seen.size
        for name, flat in (("tp_seen", (base + gt)[bs == gt]), ("tp_unseen", (base + gt)[bu == gt]),
                           ("pred_seen", base + bs), ("pred_unseen", base + bu)):
            if flat.size:
                getattr(self, name).reshape(-1)[:] += np.bincount(flat, minlength=n)
        self.gt_count += np.bincount(gt, minlength=k)
        self._cumulative = None

    def merge(self, other: "ScoreHistogram") -> None:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("Score histograms with different margin edges cannot be merged")
        for name in _COUNTS + ("gt_count",):
            getattr(self, name).__iadd__(getattr(other, name))
        self._cumulative = None

    def _split(self, gamma: float) -> int:
        """First bin predicted seen at ``gamma`` (an edge, or the nearest edge)."""
        if gamma == -np.inf:
            return 0
        if gamma == np.inf:
            return self.edges.size + 1
        g = float(np.float32(gamma))
        j = int(np.searchsorted(self.edges, g, side="left"))
        if j == self.edges.size or (j > 0 and self.edges[j] != g and g - self.edges[j - 1] < self.edges[j] - g):
            j -= 1  # nearest edge below
        return j + 1

    def is_exact_at(self, gamma: float) -> bool:
        return bool(np.isinf(gamma) or np.any(self.edges == float(np.float32(gamma))))

    def counts(self, gamma: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true positives, ground-truth pixels, predicted pixels) per class at ``gamma``."""
        if self._cumulative is None:
            zeros = np.zeros((1, self.num_classes), dtype=np.int64)
            # from_top[s] = sum of bins >= s; below[s] = sum of bins < s
            self._cumulative = {
                "tp_seen": np.concatenate([np.cumsum(self.tp_seen[::-1], axis=0)[::-1], zeros]),
                "pred_seen": np.concatenate([np.cumsum(self.pred_seen[::-1], axis=0)[::-1], zeros]),
                "tp_unseen": np.concatenate([zeros, np.cumsum(self.tp_unseen, axis=0)]),
                "pred_unseen": np.concatenate([zeros, np.cumsum(self.pred_unseen, axis=0)]),
            }
        c, s = self._cumulative, self._split(gamma)
        return c["tp_seen"][s] + c["tp_unseen"][s], self.gt_count, c["pred_seen"][s] + c["pred_unseen"][s]

    def metrics(self, gamma: float, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        tp, gt, pred = self.counts(gamma)
        return zero_shot_metrics_from_counts(tp, gt, pred, self.seen_ids, self.unseen_ids, class_names)

    def margin_quantiles(self, q: np.ndarray) -> np.ndarray:
        """For each q, the first edge with at least a fraction q of the pixels below it."""
        per_bin = self.pred_seen.sum(axis=1)
        below = np.cumsum(per_bin)[:-1] / max(per_bin.sum(), 1)  # below[j]: fraction under edges[j]
        j = np.minimum(np.searchsorted(below, np.asarray(q) - 1e-12, side="left"), self.edges.size - 1)
        return self.edges[j]

    def curve(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gamma, seen accuracy, unseen accuracy) at -inf, at every edge after a non-empty bin,
        and at +inf; gamma increasing, mean per-class accuracies in [0, 1] over the classes present."""
        seen, unseen = np.asarray(self.seen_ids), np.asarray(self.unseen_ids)
        gt = self.gt_count.astype(np.float64)
        inv = np.where(gt > 0, 1.0 / np.maximum(gt, 1), 0.0)
        n_seen, n_unseen = max((gt[seen] > 0).sum(), 1), max((gt[unseen] > 0).sum(), 1)
        w_seen = self.tp_seen[:, seen] @ inv[seen] / n_seen  # per bin
        w_unseen = self.tp_unseen[:, unseen] @ inv[unseen] / n_unseen
        acc_seen = np.concatenate([np.cumsum(w_seen[::-1])[::-1], [0.0]])  # point s: bins >= s seen
        acc_unseen = np.concatenate([[0.0], np.cumsum(w_unseen)])
        gammas = np.concatenate([[-np.inf], self.edges, [np.inf]])
        occupied = self.pred_seen.sum(axis=1) > 0
        keep = np.concatenate([[True], occupied[:-1], [True]])  # point s differs from s-1 iff bin s-1 has pixels
        return gammas[keep], acc_seen[keep], acc_unseen[keep]

    def save(self, path: str) -> None:
        np.savez_compressed(path, kind="margin_histogram", edges=self.edges, gt_count=self.gt_count,
                            num_classes=self.num_classes, seen_ids=np.asarray(self.seen_ids),
                            unseen_ids=np.asarray(self.unseen_ids), **{k: getattr(self, k) for k in _COUNTS})

    @classmethod
    def load(cls, path: str) -> "ScoreHistogram":
        with np.load(path) as d:
            if "kind" not in d or str(d["kind"]) != "margin_histogram":
                raise ValueError(f"{path} holds no margin histogram (per-pixel statistics: load_score_statistics)")
            return cls(d["edges"], *(d[k] for k in _COUNTS), d["gt_count"], int(d["num_classes"]),
                       tuple(int(i) for i in d["seen_ids"]), tuple(int(i) for i in d["unseen_ids"]))


def load_score_statistics(path: str, extra_edges: Sequence[float] = ()) -> ScoreHistogram:
    """A saved :class:`ScoreHistogram`, or per-pixel :class:`ScoreStatistics` (files of earlier
    versions) counted into one with ``extra_edges``."""
    with np.load(path) as d:
        per_pixel = "margin" in d
    if per_pixel:
        return ScoreStatistics.load(path).histogram(extra_edges)
    return ScoreHistogram.load(path)


def _group_maxima(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """((max, argmax) over classes ``a``, (max, argmax) over classes ``b``) per pixel, argmaxes as
    class indices; what ``logits.index_select(0, ids).max(0)`` gives for each (ties: the lower
    class index), without copying the larger group's scores: where the overall argmax lies in it,
    that is its maximum, and only the other pixels are looked at again."""
    if len(a) < len(b):
        return _group_maxima(logits, b, a)[::-1]
    in_a = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    in_a[a] = True
    a_val, a_arg = logits.max(dim=0)
    b_val, b_arg = logits.index_select(0, b).max(dim=0)
    b_arg = b[b_arg]
    if len(b):
        rest = ~in_a[a_arg]  # the overall maximum is in b here
        if rest.any():
            val, arg = logits[:, rest].index_select(0, a).max(dim=0)
            a_val[rest], a_arg[rest] = val, a[arg]
    return (a_val, a_arg), (b_val, b_arg)


def pixel_statistics(logits: torch.Tensor, gt: np.ndarray, seen_ids: Sequence[int], unseen_ids: Sequence[int],
                     ignore_label: int = 255) -> ScoreStatistics:
    """Statistics of the labelled pixels of one image from its uncalibrated logits (K, H, W).
    Classes in neither group are left out of both argmaxes; pixels of such classes (or ignored
    ones) are dropped."""
    k = logits.shape[0]
    seen = torch.as_tensor(list(seen_ids), dtype=torch.long, device=logits.device)
    unseen = torch.as_tensor(list(unseen_ids), dtype=torch.long, device=logits.device)
    (s_val, s_arg), (u_val, u_arg) = _group_maxima(logits, seen, unseen)
    in_groups = np.zeros(max(k, ignore_label + 1), dtype=bool)
    in_groups[list(seen_ids) + list(unseen_ids)] = True
    gt = np.asarray(gt, dtype=np.int64)
    keep = (gt != ignore_label) & in_groups[np.clip(gt, 0, len(in_groups) - 1)]
    keep_t = torch.from_numpy(keep).to(logits.device)
    return ScoreStatistics(
        margin=(s_val - u_val)[keep_t].float().cpu().numpy(),
        best_seen=s_arg[keep_t].cpu().numpy().astype(np.int16),
        best_unseen=u_arg[keep_t].cpu().numpy().astype(np.int16),
        gt=gt[keep].astype(np.int16),
        num_classes=k,
        seen_ids=tuple(int(i) for i in seen_ids),
        unseen_ids=tuple(int(i) for i in unseen_ids),
    )


def calibration_curve(stats: Union[ScoreStatistics, ScoreHistogram]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gamma, seen accuracy, unseen accuracy) at the operating points of ``stats``, gamma
    increasing (see :meth:`ScoreStatistics.curve`, :meth:`ScoreHistogram.curve`)."""
    return stats.curve()


def area_under_curve(acc_unseen: np.ndarray, acc_seen: np.ndarray) -> float:
    """Area under seen accuracy as a function of unseen accuracy (trapezoids, points in order)."""
    x, y = np.asarray(acc_unseen, dtype=np.float64), np.asarray(acc_seen, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def collect_score_statistics(model, records: List[Dict], mapper, label_lut: np.ndarray, seen_ids: Sequence[int],
                             unseen_ids: Sequence[int], ignore_label: int = 255, max_pixels_per_image: int = 0,
                             seed: int = 0, batch_size: int = 1, extra_edges: Sequence[float] = (),
                             exact: bool = False) -> Union[ScoreHistogram, ScoreStatistics]:
    """Runs ``model`` (uncalibrated: a ``calibration`` buffer is zeroed meanwhile) on the records
    and counts :func:`pixel_statistics` into a :class:`ScoreHistogram` (bins at ``extra_edges``
    too, e.g. the model's gamma; ``exact``: per-pixel :class:`ScoreStatistics` instead, 10 bytes a
    pixel); ground truth is the label file through ``label_lut``. ``max_pixels_per_image`` > 0
    keeps a random subset of each image's labelled pixels."""
    from detectron2.evaluation.evaluator import inference_context

    rng = np.random.default_rng(seed)
    saved = getattr(model, "calibration", None)
    saved = saved.clone() if saved is not None else None
    num_classes = None
    hist, parts = None, []
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
                    del out
                    if 0 < max_pixels_per_image < stats.gt.size:
                        stats = stats.subset(np.sort(rng.choice(stats.gt.size, max_pixels_per_image, replace=False)))
                    if exact:
                        parts.append(stats)
                        continue
                    if hist is None:
                        hist = ScoreHistogram.empty(stats.num_classes, seen_ids, unseen_ids, extra_edges)
                    hist.add(stats)
                    num_classes = stats.num_classes
                del outputs
    finally:
        if saved is not None:
            model.calibration.copy_(saved)
    if exact:
        return ScoreStatistics.concatenate(parts)
    if hist is None:
        raise ValueError("No records to collect score statistics from")
    return hist


def candidate_gammas(stats: Union[ScoreStatistics, ScoreHistogram], num_candidates: int) -> np.ndarray:
    """``num_candidates`` quantiles of the margins, and 0, sorted. Of a histogram: edges at the
    quantiles (where its metrics are exact)."""
    q = np.linspace(0, 1, num_candidates)
    return np.unique(np.concatenate([stats.margin_quantiles(q), [0.0]]))


def select_calibration(model, records: List[Dict], cfg, *, label_lut: np.ndarray, seen_ids: Sequence[int],
                       held_out_ids: Sequence[int], ignored_ids: Sequence[int] = (), num_candidates: int = 201,
                       max_pixels_per_image: int = 10000) -> Dict:
    """SPNet-c's gamma: the candidate that maximises the hIoU between ``seen_ids`` and the
    ``held_out_ids`` (treated as unseen) of a network trained without the latter, on ``records``
    (training images, labels through ``label_lut``; ``ignored_ids`` -- the real unseen classes --
    take part neither as ground truth nor as predictions). Candidates are quantiles of the margins
    and 0 (:func:`candidate_gammas`); ties go to the smallest |gamma|."""
    from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper

    ignore = int(getattr(model, "ignore_value", 255))
    drop = np.arange(256, dtype=np.uint8)
    drop[list(ignored_ids)] = ignore
    lut = drop[label_lut]
    stats = collect_score_statistics(
        model, records, ZeroShotSemSegDatasetMapper(cfg, is_train=False), lut, seen_ids, held_out_ids,
        ignore_label=ignore, max_pixels_per_image=max_pixels_per_image, seed=max(cfg.SEED, 0),
    )
    candidates = candidate_gammas(stats, num_candidates)
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
        "num_pixels": stats.num_pixels,
        "candidates": [float(c) for c in candidates],
        "candidate_hIoU": [float(h) for h in hiou],
    }
