# Copyright (c) CaGNet-D2 contributors.
"""Pascal-VOC 2012 + SBD in two settings that share one prepared copy:

* ``pascal_voc_20_{train,val}``: the paper's (SPNet) setting, 20 classes, background ignored,
  unseen potted plant, sheep, sofa, train, tv monitor;
* ``pascal_voc_21_zs3_{train,val}``: the ZS3Net setting, background seen, unseen cow,
  motorbike, aeroplane, sofa.

Under the datasets root (``$DETECTRON2_DATASETS``, see datasets/README.md)::

  VOCdevkit/VOC2012/JPEGImages/*.jpg
  VOCdevkit/VOC2012/SegmentationClassAug/*.png               raw train labels (SBD-augmented)
  VOCdevkit/VOC2012/SegmentationClass/*.png                  raw val labels (palette PNGs)
  VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug,val}.txt
  VOCdevkit/VOC2012/annotations_cagnet/                      written by datasets/prepare_pascal_voc.py:
      {train,val}/*.png       0 background, 1..20 classes, 255 ignore (raw VOC values)
      {train,val}.txt         split lists

Each setting reads the prepared values through its class set's lookup table (``label_lut``).
"""
import os
from typing import Dict

from ..catalog import DATASET_SPLITS, PASCAL_VOC_20, PASCAL_VOC_21_ZS3
from ..embeddings import shipped_embeddings_file
from ..register import datasets_root, register_prepared_copy

__all__ = ["pascal_voc_paths", "register_pascal_voc", "PREPARED_DIRNAME"]

PREPARED_DIRNAME = "annotations_cagnet"


def pascal_voc_paths(root: str) -> Dict:
    """Raw inputs and prepared outputs of a VOC copy at ``root`` (the datasets root)."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    prepared = os.path.join(voc, PREPARED_DIRNAME)
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    splits = DATASET_SPLITS["pascal_voc"]
    return {
        "prepared": prepared,
        "images": os.path.join(voc, "JPEGImages"),
        "raw_labels": {"train": os.path.join(voc, "SegmentationClassAug"),
                       "val": os.path.join(voc, "SegmentationClass")},
        "raw_split_files": {s: os.path.join(lists, f"{name}.txt") for s, name in splits.items()},
        "labels": {s: os.path.join(prepared, s) for s in splits},
        "split_files": {s: os.path.join(prepared, f"{s}.txt") for s in splits},
    }


def register_pascal_voc(root: str, prefix: str = "") -> None:
    """Register ``{prefix}pascal_voc_20_*`` and ``{prefix}pascal_voc_21_zs3_*`` under ``root``."""
    register_prepared_copy(
        prefix,
        [
            (PASCAL_VOC_20, PASCAL_VOC_20.raw_to_contiguous_lut()),  # 0 -> 255, k -> k - 1
            (PASCAL_VOC_21_ZS3, None),  # prepared values are already its class indices
        ],
        pascal_voc_paths(root),
        prepare_command=f"python datasets/prepare_pascal_voc.py --root {root}",
        embeddings_file=shipped_embeddings_file,
        label_values=range(21),  # prepared values: 0 background, 1..20 (and 255)
    )


register_pascal_voc(datasets_root())
