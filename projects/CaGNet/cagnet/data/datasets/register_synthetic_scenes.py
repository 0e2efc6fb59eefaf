# Copyright (c) CaGNet-D2 contributors.
"""The built-in dataset: procedurally generated scenes (see ``cagnet.data.synthetic_scenes``).

It is written on first use under ``$DETECTRON2_DATASETS/synthetic_scenes`` (deterministic by
seed) and then read through the same registration path as the real datasets.
"""
import fcntl
import os
import shutil

from .. import synthetic_scenes as scenes
from ..catalog import ZeroShotClassSet, add_class_set
from ..embeddings import shipped_embeddings_file
from ..register import (
    PREPARED_MARKER, datasets_root, register_zero_shot_sem_seg, remove_stale_temporaries, write_prepared_marker,
)

__all__ = ["CLASS_SET", "GENERATION", "MINI_GENERATION", "ensure_synthetic_scenes", "register_synthetic_scenes"]

CLASS_SET = add_class_set(
    ZeroShotClassSet(
        key="synthetic_scenes",
        class_names=tuple(c["name"] for c in scenes.CLASSES),
        unseen_names=tuple(c["name"] for c in scenes.CLASSES if c["unseen"]),
        aliases={c["name"]: " ".join(c["words"]) for c in scenes.CLASSES},
    )
)
# What the registered splits contain; the marker records it, and a mismatch regenerates.
GENERATION = {"version": scenes.VERSION, "seed": 0, "num_train": 2000, "num_val": 200, "image_size": 96}
# A miniature copy for smoke tests and quick checks of a setup (seconds to generate and train).
MINI_GENERATION = {"version": scenes.VERSION, "seed": 0, "num_train": 24, "num_val": 8, "image_size": 48}


def _read_marker(root):
    import json

    try:
        with open(os.path.join(root, PREPARED_MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_synthetic_scenes(root: str, generation=None) -> str:
    """Generate the dataset at ``root`` unless a complete copy of the same generation is there.

    A lock file serialises concurrent callers (e.g. distributed workers); the data is written
    to a temporary directory and renamed into place with its marker, so ``root`` is always
    either absent or complete.
    """
    generation = dict(generation or GENERATION)
    if _read_marker(root) == generation:
        return root
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    with open(os.path.abspath(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_marker(root) == generation:
            return root
        remove_stale_temporaries(parent, os.path.basename(os.path.abspath(root)))
        tmp = os.path.abspath(root) + f".tmp-{os.getpid()}"
        params = {k: v for k, v in generation.items() if k != "version"}
        scenes.generate(tmp, **params)
        write_prepared_marker(tmp, generation)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.rename(tmp, root)
    return root


def register_synthetic_scenes(root: str, prefix: str = "synthetic_scenes", generation=None) -> None:
    """Register ``{prefix}_train`` and ``{prefix}_val`` for a copy at ``root``."""
    for split in ("train", "val"):
        register_zero_shot_sem_seg(
            f"{prefix}_{split}",
            class_set=CLASS_SET,
            image_root=os.path.join(root, "images", split),
            label_root=os.path.join(root, "labels", split),
            split_file=os.path.join(root, f"{split}.txt"),
            marker_dir=root,
            prepare_command="(generated automatically on first use; delete the directory to regenerate)",
            embeddings_file=shipped_embeddings_file(CLASS_SET.key),
            ensure_prepared=lambda: ensure_synthetic_scenes(root, generation),
        )


register_synthetic_scenes(os.path.join(datasets_root(), "synthetic_scenes"))
register_synthetic_scenes(
    os.path.join(datasets_root(), "synthetic_scenes_mini"), prefix="synthetic_scenes_mini", generation=MINI_GENERATION
)
