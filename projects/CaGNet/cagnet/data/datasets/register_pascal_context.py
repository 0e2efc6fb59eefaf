# Copyright (c) CaGNet-D2 contributors.
"""Pascal-Context (VOC 2010) in two settings that share one prepared copy:

* ``pascal_context_33_{train,val}``: the paper's (SPNet) 33 classes, unseen cow, motorbike,
  sofa, cat; background and the other Context classes are ignored;
* ``pascal_context_60_zs3_{train,val}``: the ZS3Net setting, background + the standard 59
  classes, 10 unseen.

Under the datasets root (``$DETECTRON2_DATASETS``, see datasets/README.md)::

  VOCdevkit/VOC2010/JPEGImages/*.jpg
  VOCdevkit/VOC2010/trainval_merged.json         raw labels (Detail API JSON), or
  VOCdevkit/VOC2010/trainval/*.mat               raw labels (459-class LabelMap)
  VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt   split lists (with the .mat input)
  VOCdevkit/VOC2010/annotations_cagnet/          written by datasets/prepare_pascal_context.py:
      {train,val}/*.png       the standard 59-class maps: 0 background, 1..59, 255 ignore
      {train,val}.txt         split lists

Each setting reads the prepared values through its class set's lookup table (``label_lut``).
"""
import os
from typing import Dict

from ..catalog import DATASET_SPLITS, PASCAL_CONTEXT_33, PASCAL_CONTEXT_60_ZS3
from ..embeddings import shipped_embeddings_file
from ..register import datasets_root, register_prepared_copy

__all__ = ["pascal_context_paths", "register_pascal_context", "PREPARED_DIRNAME"]

PREPARED_DIRNAME = "annotations_cagnet"


def pascal_context_paths(root: str) -> Dict:
    """Raw inputs and prepared outputs of a Pascal-Context copy at ``root`` (the datasets root)."""
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    prepared = os.path.join(voc, PREPARED_DIRNAME)
    splits = DATASET_SPLITS["pascal_context"]
    return {
        "prepared": prepared,
        "images": os.path.join(voc, "JPEGImages"),
        "json": os.path.join(voc, "trainval_merged.json"),
        "mat_dir": os.path.join(voc, "trainval"),
        "raw_split_files": {s: os.path.join(voc, "ImageSets", "Main", f"{n}.txt") for s, n in splits.items()},
        "labels": {s: os.path.join(prepared, s) for s in splits},
        "split_files": {s: os.path.join(prepared, f"{s}.txt") for s in splits},
    }


def register_pascal_context(root: str, prefix: str = "") -> None:
    """Register ``{prefix}pascal_context_33_*`` and ``{prefix}pascal_context_60_zs3_*`` under ``root``."""
    register_prepared_copy(
        prefix,
        [
            (PASCAL_CONTEXT_33, PASCAL_CONTEXT_33.raw_to_contiguous_lut()),  # 59-class value -> 0..32
            (PASCAL_CONTEXT_60_ZS3, None),  # prepared values are already its class indices
        ],
        pascal_context_paths(root),
        prepare_command=f"python datasets/prepare_pascal_context.py --root {root}",
        embeddings_file=shipped_embeddings_file,
        label_values=range(60),  # prepared values: 0 background, 1..59 (and 255)
    )


register_pascal_context(datasets_root())
