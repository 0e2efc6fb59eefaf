# Copyright (c) CaGNet-D2 contributors.
"""SPNet-c's calibration, for every method: gamma, subtracted from every seen-class score at test
time, chosen without unseen labels.

Before the run trains, a second network of the same kind and config is trained (under
OUTPUT_DIR/calibration, resumable) with some seen classes held out as pseudo-unseen (their pixels
ignored, their embeddings known, as unseen classes are), and gamma is the value that maximises its
hIoU between the remaining seen classes and the held-out ones on training images
(:func:`cagnet.evaluation.select_calibration`). The real unseen classes take no part. The model
keeps gamma in its ``calibration`` buffer (saved in checkpoints). ``MODEL.CALIBRATION`` configures it.
"""
import json
import logging
import os
from typing import List, Sequence

import numpy as np

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.utils import comm

from ..data.dataset_mapper import training_label_lut

__all__ = ["CalibrationMixin", "held_out_class_ids"]

logger = logging.getLogger(__name__)


def held_out_class_ids(cfg, seen_ids: Sequence[int], unseen_ids: Sequence[int], class_names: Sequence[str]) -> List[int]:
    """The seen classes that SPNet-c's calibration network treats as unseen."""
    c = cfg.MODEL.CALIBRATION
    if c.HELD_OUT_CLASSES:
        unknown = [n for n in c.HELD_OUT_CLASSES if n not in class_names]
        if unknown:
            raise ValueError(f"MODEL.CALIBRATION.HELD_OUT_CLASSES: unknown classes {unknown}")
        ids = sorted(class_names.index(n) for n in c.HELD_OUT_CLASSES)
        not_seen = [class_names[i] for i in ids if i not in seen_ids]
        if not_seen:
            raise ValueError(f"MODEL.CALIBRATION.HELD_OUT_CLASSES must be seen classes; {not_seen} are not")
        return ids
    n = c.NUM_HELD_OUT or len(unseen_ids)
    n = max(1, min(n, len(seen_ids) - 1))
    rng = np.random.default_rng(max(cfg.SEED, 0))
    return sorted(int(i) for i in rng.choice(sorted(seen_ids), size=n, replace=False))


class CalibrationMixin:
    """For a trainer ``T(cfg, classes=...)`` whose model has ``zero_shot_classes()`` and
    ``set_calibration(gamma)``: with ``MODEL.CALIBRATION.METHOD "held_out_classes"``, ``train()``
    first sets gamma (see the module doc)."""

    def train(self):
        method = self.cfg.MODEL.CALIBRATION.METHOD
        if method == "held_out_classes":
            self.calibrate()
            if self.start_iter >= self.max_iter:
                # A finished network resumed to be calibrated (tools/benchmark_methods.py gives a
                # calibrated run its uncalibrated run's network): no step will save gamma, so save it now.
                self.checkpointer.save("model_final", iteration=self.iter)
        elif method != "none":
            raise ValueError(f"MODEL.CALIBRATION.METHOD must be 'none' or 'held_out_classes', got {method!r}")
        return super().train()

    # ------------------------------------------------------------------ calibration
    def calibrate(self) -> float:
        """Sets gamma from a network trained without some seen classes (see the module doc)."""
        from ..evaluation.calibration import select_calibration

        cfg, model = self.cfg, self.model
        out_dir = os.path.join(cfg.OUTPUT_DIR, "calibration")
        path = os.path.join(out_dir, "calibration.json")
        if not os.path.isfile(path):
            classes = model.zero_shot_classes()
            seen, unseen = classes["seen_class_ids"], classes["unseen_class_ids"]
            held_out = held_out_class_ids(cfg, seen, unseen, classes["class_names"])
            sub_cfg = cfg.clone()
            sub_cfg.defrost()
            sub_cfg.OUTPUT_DIR = out_dir
            sub_cfg.MODEL.CALIBRATION.METHOD = "none"
            sub_cfg.MODEL.SELF_TRAINING.ENABLED = False
            sub_cfg.DATASETS.TEST = ()
            sub_cfg.TEST.EVAL_PERIOD = 0
            sub_cfg.freeze()
            sub_classes = dict(classes, seen_class_ids=[i for i in seen if i not in held_out],
                               unseen_class_ids=sorted(unseen + held_out))
            logger.info(f"Calibration: training a network without the seen classes "
                        f"{[classes['class_names'][i] for i in held_out]} in {out_dir}")
            sub = type(self)(sub_cfg, classes=sub_classes)
            sub.resume_or_load(resume=True)
            sub.train()
            info = None
            if comm.is_main_process():
                records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
                order = np.random.default_rng(max(cfg.SEED, 0)).permutation(len(records))
                records = [records[i] for i in order[: cfg.MODEL.CALIBRATION.NUM_IMAGES]]
                metas = [MetadataCatalog.get(n) for n in cfg.DATASETS.TRAIN]
                info = select_calibration(
                    sub.model, records, cfg, label_lut=training_label_lut(metas),
                    seen_ids=sub_classes["seen_class_ids"], held_out_ids=held_out, ignored_ids=unseen,
                    num_candidates=cfg.MODEL.CALIBRATION.NUM_CANDIDATES,
                )
                info["held_out_classes"] = [classes["class_names"][i] for i in held_out]
                with open(path + ".tmp", "w") as f:
                    json.dump(info, f, indent=1)
                os.replace(path + ".tmp", path)
            del sub
            comm.synchronize()
        with open(path) as f:
            info = json.load(f)
        model.set_calibration(info["gamma"])
        logger.info(f"Calibration: gamma = {info['gamma']:.4f} (hIoU {info['hIoU']:.2f} between the seen "
                    f"classes and the held-out {info['held_out_classes']} on training images)")
        return info["gamma"]


