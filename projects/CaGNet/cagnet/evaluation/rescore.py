# Copyright (c) CaGNet-D2 contributors.
"""Scoring written predictions again (``TEST.SAVE_PREDICTIONS``): a folder of class-index PNGs,
one per image of a dataset, against the dataset's ground truth, through the evaluator's own
per-image code, so the metrics equal those printed when the predictions were made."""
import os
from typing import Dict

import numpy as np

from detectron2.data import DatasetCatalog

from .zero_shot_evaluator import ZeroShotSemSegEvaluator, load_label_map

__all__ = ["rescore_predictions"]


def rescore_predictions(dataset_name: str, predictions_dir: str) -> Dict[str, float]:
    """Zero-shot metrics of ``predictions_dir/<image_id>.png`` (class indices of the dataset's
    setting) for every image of ``dataset_name``."""
    if not os.path.isdir(predictions_dir):
        raise FileNotFoundError(f"No predictions folder {predictions_dir}")
    records = DatasetCatalog.get(dataset_name)
    missing = [r["image_id"] for r in records if not os.path.isfile(os.path.join(predictions_dir, f"{r['image_id']}.png"))]
    if missing:
        raise FileNotFoundError(
            f"{predictions_dir}: no prediction for {len(missing)} of the {len(records)} images of {dataset_name}, "
            f"e.g. {missing[0]}.png (written by --eval-only with TEST.SAVE_PREDICTIONS True)")
    evaluator = ZeroShotSemSegEvaluator(dataset_name, distributed=False)
    evaluator.reset()
    k = len(evaluator._class_names)
    for record in records:
        path = os.path.join(predictions_dir, f"{record['image_id']}.png")
        pred = load_label_map(path, dtype=np.int64)
        if pred.ndim != 2 or pred.max(initial=0) >= k:
            raise ValueError(f"{path}: expected a single-channel map of class indices 0..{k - 1} of {dataset_name}, "
                             f"got shape {pred.shape} with values up to {pred.max(initial=0)}")
        evaluator.process_prediction(record, pred)
    return evaluator.evaluate()["sem_seg"]
