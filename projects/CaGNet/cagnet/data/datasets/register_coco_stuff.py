# Copyright (c) CaGNet-D2 contributors.
"""COCO-stuff 164k with 171 classes and SPNet's 15 unseen: ``coco_stuff_171_{train,val}``.

Under the datasets root (``$DETECTRON2_DATASETS``, see datasets/README.md)::

  coco/{train2017,val2017}/*.jpg                        images
  coco/stuffthingmaps/{train2017,val2017}/*.png         raw labels (value = COCO id - 1)
  coco/annotations/{stuff,instances}_{train,val}2017.json   (optional raw input, --from-json)
  coco/stuffthingmaps_cagnet171/                        written by datasets/prepare_coco_stuff.py:
      {train2017,val2017}/*.png                         classes 0..170, 255 = ignore
      {train2017,val2017}.txt                           split lists (file stems)
"""
import os
from typing import Dict

from ..catalog import COCO_STUFF_171, DATASET_SPLITS
from ..embeddings import shipped_embeddings_file
from ..register import datasets_root, register_prepared_copy

__all__ = ["coco_stuff_paths", "register_coco_stuff", "PREPARED_DIRNAME"]

PREPARED_DIRNAME = "stuffthingmaps_cagnet171"


def coco_stuff_paths(root: str) -> Dict:
    """Raw inputs and prepared outputs of a COCO-stuff copy at ``root`` (the datasets root)."""
    coco = os.path.join(root, "coco")
    prepared = os.path.join(coco, PREPARED_DIRNAME)
    splits = DATASET_SPLITS["coco_stuff"]
    return {
        "prepared": prepared,
        "images": {s: os.path.join(coco, d) for s, d in splits.items()},
        "raw_labels": {s: os.path.join(coco, "stuffthingmaps", d) for s, d in splits.items()},
        "stuff_json": {s: os.path.join(coco, "annotations", f"stuff_{d}.json") for s, d in splits.items()},
        "instances_json": {s: os.path.join(coco, "annotations", f"instances_{d}.json") for s, d in splits.items()},
        "labels": {s: os.path.join(prepared, d) for s, d in splits.items()},
        "split_files": {s: os.path.join(prepared, f"{d}.txt") for s, d in splits.items()},
    }


def register_coco_stuff(root: str, prefix: str = "") -> None:
    """Register ``{prefix}coco_stuff_171_{train,val}`` for a copy under ``root``."""
    register_prepared_copy(
        prefix,
        [(COCO_STUFF_171, None)],
        coco_stuff_paths(root),
        prepare_command=f"python datasets/prepare_coco_stuff.py --root {root}",
        embeddings_file=shipped_embeddings_file,
    )


register_coco_stuff(datasets_root())
