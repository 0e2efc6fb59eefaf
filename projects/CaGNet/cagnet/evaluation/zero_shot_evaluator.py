# Copyright (c) CaGNet-D2 contributors.
"""Zero-shot semantic-segmentation metrics (paper Table 1) on top of detectron2's SemSegEvaluator.

One confusion matrix over all seen and unseen classes (detectron2's: rows = prediction, columns
= ground truth, last row/column = ignore). Per class: IoU = TP / (TP + FP + FN) and accuracy =
TP / GT. Means run over the classes that occur in the ground truth (a class without ground-truth
pixels is excluded, not counted as 0), for all classes, the seen ones and the unseen ones;
hIoU = 2 S U / (S + U), 0 when either is 0. Pixel accuracy of a group counts its ground-truth
pixels. All values in percent.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize

from ..data.dataset_mapper import dataset_label_lut
from ..data.file_checks import ImageReadError, check_label_values, label_value_table
from ..utils.atomic_file import atomic_write, atomic_write_with

__all__ = ["ZeroShotSemSegEvaluator", "zero_shot_metrics", "zero_shot_metrics_from_counts", "format_zero_shot_table",
           "write_label_png"]

RESULTS_FILE = "zs_sem_seg_results.json"
PREDICTIONS_DIR = "predictions"  # <image_id>.png per image, with save_predictions
PREDICTIONS_JSON = "sem_seg_predictions.json"  # detectron2's SemSegEvaluator format


def write_label_png(path: str, label: np.ndarray) -> None:
    """A class-index map as a grayscale PNG (uint8; 16 bit above 255 classes), written atomically."""
    dtype = np.uint8 if label.max(initial=0) <= 255 else np.uint16
    atomic_write_with(path, Image.fromarray(np.ascontiguousarray(label.astype(dtype))).save, suffix=".tmp.png")


def load_label_map(filename: str, dtype=int) -> np.ndarray:
    """A label PNG as an array (detectron2's loader passes copy=False, which numpy 2 rejects);
    a file that cannot be decoded raises ImageReadError with its path."""
    with open(filename, "rb") as f:
        try:
            return np.asarray(Image.open(f), dtype=dtype)
        except Exception as e:  # PIL: OSError (truncated), UnidentifiedImageError, ...
            raise ImageReadError(f"{filename}: cannot decode this label file ({type(e).__name__}: {e}); it is "
                                 "damaged, truncated or not an image") from e


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def zero_shot_metrics(
    conf_matrix: np.ndarray,
    seen_ids: Sequence[int],
    unseen_ids: Sequence[int],
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """Metrics from a (K+1) x (K+1) confusion matrix (rows prediction, columns ground truth).

    The last row and column hold ignored pixels and predictions outside 0..K-1; they count
    nowhere (as in detectron2).
    """
    k = conf_matrix.shape[0] - 1
    cm = conf_matrix[:k, :k].astype(np.float64)
    return zero_shot_metrics_from_counts(np.diag(cm), cm.sum(axis=0), cm.sum(axis=1), seen_ids, unseen_ids, class_names)


def zero_shot_metrics_from_counts(
    tp: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    seen_ids: Sequence[int],
    unseen_ids: Sequence[int],
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """The same metrics from what they depend on: per class, the true positives, the
    ground-truth pixels and the predicted pixels (over labelled pixels)."""
    tp, gt, pred = (np.asarray(a, dtype=np.float64) for a in (tp, gt, pred))
    k = tp.shape[0]
    present = gt > 0
    iou = np.full(k, np.nan)
    acc = np.full(k, np.nan)
    acc[present] = tp[present] / gt[present]
    union = gt + pred - tp
    iou[present] = tp[present] / union[present]

    res: Dict[str, float] = OrderedDict()
    groups = {"": np.arange(k), "-seen": np.asarray(seen_ids, int), "-unseen": np.asarray(unseen_ids, int)}
    for suffix, ids in groups.items():
        res[f"mIoU{suffix}"] = 100 * _nanmean(iou[ids]) if ids.size else float("nan")
    s, u = res["mIoU-seen"], res["mIoU-unseen"]
    res["hIoU"] = 0.0 if not (s > 0 and u > 0) else 2 * s * u / (s + u)
    for suffix, ids in groups.items():
        n_gt = gt[ids].sum() if ids.size else 0.0
        res[f"pACC{suffix}"] = 100 * tp[ids].sum() / n_gt if n_gt > 0 else float("nan")
    for suffix, ids in groups.items():
        res[f"mACC{suffix}"] = 100 * _nanmean(acc[ids]) if ids.size else float("nan")
    names = class_names or [str(i) for i in range(k)]
    for i, name in enumerate(names):
        res[f"IoU-{name}"] = 100 * iou[i]
    for i, name in enumerate(names):
        res[f"ACC-{name}"] = 100 * acc[i]
    return res


def format_zero_shot_table(res: Dict[str, float]) -> str:
    """The overall / seen / unseen table (plus hIoU) as text."""
    rows = [
        [group, res[f"mIoU{sfx}"], res[f"pACC{sfx}"], res[f"mACC{sfx}"]]
        for group, sfx in (("overall", ""), ("seen", "-seen"), ("unseen", "-unseen"))
    ]
    table = tabulate(rows, headers=["classes", "mIoU", "pACC", "mACC"], floatfmt=".2f", tablefmt="pipe")
    return f"{table}\nhIoU: {res['hIoU']:.2f}"


class ZeroShotSemSegEvaluator(SemSegEvaluator):
    """detectron2's SemSegEvaluator with seen / unseen / harmonic metrics.

    Seen and unseen classes come from the dataset metadata (``seen_class_ids``,
    ``unseen_class_ids``: contiguous indices). Results go under ``"sem_seg"`` and, with an output
    directory, to ``zs_sem_seg_results.json`` there. With ``save_predictions`` (TEST.SAVE_PREDICTIONS)
    each image's prediction also goes to ``predictions/<image_id>.png`` there (class indices of this
    setting: for a dataset with a ``label_lut`` they are not the values of its label files), and all
    of them to detectron2's ``sem_seg_predictions.json`` (``category_id`` = class index).
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None,
                 save_predictions: bool = False, **kwargs):
        if save_predictions and not output_dir:
            raise ValueError("save_predictions needs an output_dir to write the predictions to")
        self._save_predictions = save_predictions
        kwargs.setdefault("sem_seg_loading_fn", load_label_map)
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        for key in ("seen_class_ids", "unseen_class_ids"):
            if not hasattr(meta, key):
                raise KeyError(f"Dataset {dataset_name!r} has no metadata {key!r}; it is not a zero-shot dataset")
        # Values in the label files -> class indices of this setting (identity for most).
        self._label_lut = dataset_label_lut(meta).astype(np.int64)
        self._label_values, self._label_values_source = label_value_table([meta])
        self._seen_ids = list(meta.seen_class_ids)
        self._unseen_ids = list(meta.unseen_class_ids)
        self._logger = logging.getLogger(__name__)

    def process(self, inputs, outputs):
        # detectron2's version also builds boundary IoU and per-image RLE JSON, which the
        # zero-shot protocol does not use, and converts tensors in a way numpy 2 deprecates.
        for item, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int64)
            self.process_prediction(item, pred)
            if self._save_predictions:
                self._write_prediction(item, pred)

    def process_prediction(self, item: Dict, pred: np.ndarray) -> None:
        """Adds one image's predicted class indices (H, W) to the confusion matrix (also used to
        rescore written predictions, tools/rescore_predictions.py)."""
        k = self._num_classes
        gt_file = self.input_file_to_gt_file[item["file_name"]]
        raw = self.sem_seg_loading_fn(gt_file, dtype=np.uint8)
        # Before the lookup table, which may map a stray value to ignore or to the value k.
        check_label_values(raw, self._label_values, gt_file, self._label_values_source)
        gt = self._label_lut[raw]
        if gt.shape != pred.shape:
            raise ValueError(f"Prediction of shape {pred.shape} for {gt_file} of shape {gt.shape}")
        gt[gt == self._ignore_label] = k
        self._conf_matrix += np.bincount(
            (k + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self._conf_matrix.size
        ).reshape(self._conf_matrix.shape)

    def _write_prediction(self, item: Dict, pred: np.ndarray) -> None:
        folder = os.path.join(self._output_dir, PREDICTIONS_DIR)
        os.makedirs(folder, exist_ok=True)
        image_id = str(item.get("image_id", os.path.splitext(os.path.basename(item["file_name"]))[0]))
        write_label_png(os.path.join(folder, image_id + ".png"), pred)
        self._predictions.extend(self.encode_json_sem_seg(pred, item["file_name"]))

    def evaluate(self):
        if self._distributed:
            synchronize()
            matrices = all_gather(self._conf_matrix)
            predictions = all_gather(self._predictions) if self._save_predictions else []
            if not is_main_process():
                return None
            self._conf_matrix = np.sum(matrices, axis=0)
            self._predictions = list(itertools.chain(*predictions))
        if self._save_predictions:
            path = os.path.join(self._output_dir, PREDICTIONS_JSON)
            with atomic_write(path, "w") as f:  # a full disk: FileSaveError, the previous file kept
                json.dump(self._predictions, f)
        res = zero_shot_metrics(self._conf_matrix, self._seen_ids, self._unseen_ids, self._class_names)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, RESULTS_FILE)
            with atomic_write(path, "w") as f:
                # NaN (a class absent from the ground truth) is written as null.
                json.dump({k: (None if np.isnan(v) else v) for k, v in res.items()}, f, indent=1)
        self._logger.info(
            f"Zero-shot evaluation on {self._dataset_name} ({len(self._seen_ids)} seen, "
            f"{len(self._unseen_ids)} unseen classes):\n" + format_zero_shot_table(res)
        )
        return OrderedDict({"sem_seg": res})
