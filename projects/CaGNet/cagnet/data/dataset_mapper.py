# Copyright (c) CaGNet-D2 contributors.
"""Dataset mapper for zero-shot semantic segmentation.

In training, label values of unseen classes become ``ignore`` through a 256-entry lookup table, so
the model never receives an unseen-class label (the label files on disk stay complete: they are
also the test ground truth). Augmentation follows the reference: random rescale, pad with ignore
and crop to a fixed size, horizontal flip. A sample may carry ``"aug_seed"``: its augmentation is
then a pure function of that seed, which makes a resumed run see the same crops and flips as an
uninterrupted one.
"""
import copy
import random
from typing import List, Optional, Sequence

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from .file_checks import check_label_values, label_value_table, read_image_file

__all__ = [
    "RandomScale",
    "ZeroShotSemSegDatasetMapper",
    "dataset_label_lut",
    "seen_label_lut",
    "training_label_lut",
]


class RandomScale(T.Augmentation):
    """Resize by a factor drawn uniformly from [min_scale, max_scale] (labels: nearest)."""

    def __init__(self, min_scale: float, max_scale: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        s = np.random.uniform(self.min_scale, self.max_scale)
        return T.ResizeTransform(h, w, max(1, int(round(h * s))), max(1, int(round(w * s))))


def seen_label_lut(unseen_class_ids: Sequence[int], ignore_label: int = 255) -> np.ndarray:
    """uint8 lookup table that maps unseen class indices to ``ignore_label`` and keeps the rest."""
    lut = np.arange(256, dtype=np.uint8)
    lut[list(unseen_class_ids)] = ignore_label
    return lut


def dataset_label_lut(meta) -> np.ndarray:
    """The dataset's file-value -> class-index table (identity when it has none)."""
    lut = getattr(meta, "label_lut", None)
    return np.arange(256, dtype=np.uint8) if lut is None else np.asarray(lut, dtype=np.uint8)


def training_label_lut(metas) -> np.ndarray:
    """File value -> training label: the dataset's table, then unseen classes -> ignore."""
    luts = {dataset_label_lut(m).tobytes() for m in metas}
    if len(luts) != 1:
        raise ValueError("Training datasets with different label tables cannot be mixed")
    unseen = sorted({i for m in metas for i in getattr(m, "unseen_class_ids", [])})
    return seen_label_lut(unseen, getattr(metas[0], "ignore_label", 255))[dataset_label_lut(metas[0])]


class ZeroShotSemSegDatasetMapper:
    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str = "BGR",
        label_lut: Optional[np.ndarray] = None,
        label_values: Optional[np.ndarray] = None,
        label_values_source: str = "",
    ):
        """
        Args:
            augmentations: applied to image and label together.
            label_lut: (256,) uint8 applied to the label map (training: unseen -> ignore).
            label_values: (256,) bool, the values a label file may hold (None: not checked);
                ``label_values_source`` says which they are, for the error.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.label_lut = label_lut
        self.label_values = label_values
        self.label_values_source = label_values_source

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augs = []
        if is_train:
            lo, hi = cfg.INPUT.SCALE_RANGE
            if (lo, hi) != (1.0, 1.0):
                augs.append(RandomScale(lo, hi))
            if cfg.INPUT.CROP.ENABLED:
                augs.append(
                    T.FixedSizeCrop(
                        tuple(cfg.INPUT.CROP.SIZE),
                        pad=True,
                        pad_value=float(np.mean(cfg.MODEL.PIXEL_MEAN)),
                        seg_pad_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    )
                )
            if cfg.INPUT.RANDOM_FLIP != "none":
                augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                         vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
        label_lut, label_values, source = None, None, ""
        if is_train and cfg.DATASETS.TRAIN:
            metas = [MetadataCatalog.get(n) for n in cfg.DATASETS.TRAIN]
            label_lut = training_label_lut(metas)
            label_values, source = label_value_table(metas)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "label_lut": label_lut,
            "label_values": label_values,
            "label_values_source": source,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        seed = dataset_dict.pop("aug_seed", None)
        if seed is not None:
            np.random.seed(seed)
            random.seed(seed)
        image = read_image_file(dataset_dict["file_name"], format=self.image_format)
        label = None
        if "sem_seg_file_name" in dataset_dict and self.is_train:
            label_file = dataset_dict.pop("sem_seg_file_name")
            label = read_image_file(label_file, "L").squeeze(2)
            if label.shape != image.shape[:2]:
                raise ValueError(
                    f"Label {label_file} has shape {label.shape} but its image "
                    f"{dataset_dict['file_name']} is {image.shape[:2]}"
                )
            if self.label_values is not None:
                check_label_values(label, self.label_values, label_file, self.label_values_source)
            if self.label_lut is not None:
                label = self.label_lut[label]
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if label is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(label.astype("long"))
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict
