# Copyright (c) CaGNet-D2 contributors.
"""The built-in dataset: procedurally generated scenes (see ``cagnet.data.synthetic_scenes``).

It is written on first use under ``$DETECTRON2_DATASETS/synthetic_scenes`` (deterministic by
seed) and then read through the same registration path as the real datasets.

Variants (another generation seed, other sizes, another unseen split) are selected with the
config keys ``DATASETS.SYNTHETIC_SCENES.*``: :func:`apply_synthetic_scenes_variant` (called by
``tools/train_net.py`` and the other tools when they load a config) registers
``synthetic_scenes_{train,val}`` for the variant, generated into a directory of its own.
"""
import fcntl
import os
import shutil
from typing import Dict, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .. import synthetic_scenes as scenes
from ..catalog import ZeroShotClassSet, add_class_set
from ..embeddings import shipped_embeddings_file
from ..register import (
    PREPARED_MARKER, datasets_root, register_zero_shot_sem_seg, remove_stale_temporaries, write_prepared_marker,
)

__all__ = [
    "CLASS_SET", "GENERATION", "MINI_GENERATION", "ensure_synthetic_scenes", "register_synthetic_scenes",
    "synthetic_scenes_class_set", "apply_synthetic_scenes_variant", "variant_root",
]

CLASS_SET = add_class_set(
    ZeroShotClassSet(key="synthetic_scenes", class_names=scenes.CLASS_NAMES, unseen_names=scenes.DEFAULT_UNSEEN)
)
# What the registered splits contain; the marker records it, and a mismatch regenerates.
GENERATION = {"version": scenes.VERSION, "seed": 0, "num_train": 2000, "num_val": 300, "image_size": 96}
# A miniature copy for smoke tests and quick checks of a setup (seconds to generate and train).
MINI_GENERATION = {"version": scenes.VERSION, "seed": 0, "num_train": 24, "num_val": 8, "image_size": 48}


def synthetic_scenes_class_set(unseen_names: Optional[Sequence[str]] = None) -> ZeroShotClassSet:
    """The built-in classes with the default or another unseen split (names of the vocabulary)."""
    if not unseen_names:
        return CLASS_SET
    unknown = sorted(set(unseen_names) - set(scenes.CLASS_NAMES))
    if unknown:
        raise ValueError(
            f"DATASETS.SYNTHETIC_SCENES.UNSEEN_CLASSES: {unknown} are not classes of the built-in dataset "
            f"(its classes: {list(scenes.CLASS_NAMES)})"
        )
    if len(set(unseen_names)) == len(scenes.CLASS_NAMES):
        raise ValueError("DATASETS.SYNTHETIC_SCENES.UNSEEN_CLASSES: at least one class must stay seen")
    return ZeroShotClassSet(key=CLASS_SET.key, class_names=CLASS_SET.class_names, unseen_names=tuple(unseen_names))


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


def register_synthetic_scenes(
    root: str, prefix: str = "synthetic_scenes", generation=None, class_set: Optional[ZeroShotClassSet] = None,
    replace: bool = False,
) -> None:
    """Register ``{prefix}_train`` and ``{prefix}_val`` for a copy at ``root``.

    ``class_set`` selects the unseen split (default: the shipped one, see
    :func:`synthetic_scenes_class_set`); ``replace`` re-registers names that exist already.
    """
    class_set = class_set or CLASS_SET
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if replace and name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_zero_shot_sem_seg(
            name,
            class_set=class_set,
            image_root=os.path.join(root, "images", split),
            label_root=os.path.join(root, "labels", split),
            split_file=os.path.join(root, f"{split}.txt"),
            marker_dir=root,
            prepare_command="(generated automatically on first use; delete the directory to regenerate)",
            embeddings_file=shipped_embeddings_file(class_set.key),
            ensure_prepared=lambda: ensure_synthetic_scenes(root, generation),
        )


def variant_root(generation: Dict) -> str:
    """Where a generation lives: the default one at ``synthetic_scenes``, others beside it."""
    if {k: generation[k] for k in GENERATION} == GENERATION:
        return os.path.join(datasets_root(), "synthetic_scenes")
    g = generation
    return os.path.join(
        datasets_root(), f"synthetic_scenes_seed{g['seed']}_{g['num_train']}-{g['num_val']}_{g['image_size']}px"
    )


def apply_synthetic_scenes_variant(cfg) -> None:
    """Register ``synthetic_scenes_{train,val}`` as ``cfg.DATASETS.SYNTHETIC_SCENES`` says, when
    it says anything but the defaults (seed, sizes, unseen split)."""
    v = cfg.DATASETS.SYNTHETIC_SCENES
    generation = {"version": scenes.VERSION, "seed": int(v.SEED), "num_train": int(v.NUM_TRAIN),
                  "num_val": int(v.NUM_VAL), "image_size": int(v.IMAGE_SIZE)}
    for key in ("num_train", "num_val", "image_size"):
        if generation[key] <= 0:
            raise ValueError(f"DATASETS.SYNTHETIC_SCENES.{key.upper()} must be positive, got {generation[key]}")
    class_set = synthetic_scenes_class_set(list(v.UNSEEN_CLASSES))
    if generation == GENERATION and class_set is CLASS_SET:
        return
    register_synthetic_scenes(variant_root(generation), generation=generation, class_set=class_set, replace=True)


register_synthetic_scenes(os.path.join(datasets_root(), "synthetic_scenes"))
register_synthetic_scenes(
    os.path.join(datasets_root(), "synthetic_scenes_mini"), prefix="synthetic_scenes_mini", generation=MINI_GENERATION
)
