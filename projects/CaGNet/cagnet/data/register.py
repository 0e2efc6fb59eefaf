# Copyright (c) CaGNet-D2 contributors.
"""One registration path for every zero-shot semantic-segmentation dataset.

A prepared dataset is a directory of images, a directory of label PNGs (contiguous class indices,
255 = ignore), a split file listing stems, and a marker file that the prepare script (or the
built-in generator) writes last. The marker is what tells a finished dataset from a partial one.
"""
import json
import logging
import os
import re
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..utils.atomic_file import atomic_write
from .catalog import ZeroShotClassSet

__all__ = [
    "PREPARED_MARKER",
    "EVALUATOR_TYPE",
    "datasets_root",
    "register_zero_shot_sem_seg",
    "register_prepared_copy",
    "load_zero_shot_sem_seg",
    "write_prepared_marker",
    "DatasetNotPreparedError",
    "remove_stale_temporaries",
]

PREPARED_MARKER = ".cagnet_prepared.json"
EVALUATOR_TYPE = "zero_shot_sem_seg"


class DatasetNotPreparedError(FileNotFoundError):
    pass


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, default ``datasets/`` (the detectron2 convention)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def write_prepared_marker(directory: str, info: Dict) -> None:
    """Mark ``directory`` as completely prepared (written atomically, last)."""
    path = os.path.join(directory, PREPARED_MARKER)
    with atomic_write(path, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(parent: str, name: str) -> List[str]:
    """Delete the temporary folders that a killed generation of dataset ``name`` left in
    ``parent`` (``<name>.tmp-<pid>`` and the hidden ``.<name>.tmp-*``); returns their paths.

    Call it only while holding the dataset's lock: then no other generator of ``name`` is at
    work. A folder whose name carries the id of a live process other than this one is kept (a
    generator started without the lock).
    """
    removed = []
    prefix = re.compile(r"\.?" + re.escape(name) + r"\.tmp-(\d*)")
    for entry in sorted(os.listdir(parent)):
        m = prefix.match(entry)
        path = os.path.join(parent, entry)
        if not m or not os.path.isdir(path):
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logging.getLogger(__name__).info(f"Removed temporary folders of an interrupted generation: {removed}")
    return removed


def _not_prepared(what: str, path: str, prepare_command: str) -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"{what}: {path}\nThe dataset is missing or was not completely prepared. Prepare it with:\n"
        f"  {prepare_command}\n(see datasets/README.md; the root is $DETECTRON2_DATASETS, now "
        f"{datasets_root()!r})"
    )


def load_zero_shot_sem_seg(
    *,
    image_root: str,
    label_root: str,
    split_file: str,
    marker_dir: str,
    prepare_command: str,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
) -> List[Dict]:
    """Dataset dicts (``file_name``, ``sem_seg_file_name``, ``image_id``) of one split."""
    if not os.path.isfile(os.path.join(marker_dir, PREPARED_MARKER)):
        raise _not_prepared("No completion marker " + PREPARED_MARKER, marker_dir, prepare_command)
    if not os.path.isfile(split_file):
        raise _not_prepared("Split file not found", split_file, prepare_command)
    with open(split_file) as f:
        stems = [line.strip() for line in f if line.strip()]
    if not stems:
        raise _not_prepared("Split file is empty", split_file, prepare_command)
    records, missing = [], []
    for stem in stems:
        image = os.path.join(image_root, stem + image_ext)
        label = os.path.join(label_root, stem + label_ext)
        for p in (image, label):
            if not os.path.isfile(p):
                missing.append(p)
        records.append({"file_name": image, "sem_seg_file_name": label, "image_id": stem})
    if missing:
        raise _not_prepared(
            f"{len(missing)} files listed by {split_file} are missing, the first", missing[0], prepare_command
        )
    return records


def register_zero_shot_sem_seg(
    name: str,
    *,
    class_set: ZeroShotClassSet,
    image_root: str,
    label_root: str,
    split_file: str,
    marker_dir: str,
    prepare_command: str,
    embeddings_file: str,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    ensure_prepared: Optional[Callable[[], None]] = None,
    ignore_label: int = 255,
    label_lut: Optional[Sequence[int]] = None,
    label_values: Optional[Sequence[int]] = None,
) -> None:
    """Register a split in ``DatasetCatalog`` and its classes in ``MetadataCatalog``.

    Registering a name twice is harmless (the second call does nothing). ``ensure_prepared`` is
    called before loading (the built-in dataset generates itself there). ``label_lut`` (256
    values) maps the values stored in the label files to class indices of this setting, so that
    two settings of one dataset (e.g. VOC with and without background) share one prepared copy;
    the mapper and the evaluator apply it. ``label_values`` are the values the label files may
    hold (default: the class indices and ``ignore_label`` without a table; with one, the values it
    maps to a class, and ``ignore_label``); any other value in a label file is an error in
    training, evaluation and self-training (``cagnet.data.file_checks``).
    """
    if label_lut is not None and len(label_lut) != 256:
        raise ValueError(f"{name}: label_lut must have 256 entries, got {len(label_lut)}")
    if label_values is None:
        if label_lut is None:
            label_values = range(class_set.num_classes)
        else:
            label_values = [v for v, c in enumerate(label_lut) if c != ignore_label]
    label_values = tuple(sorted({int(v) for v in label_values} | {int(ignore_label)}))
    if label_values[0] < 0 or label_values[-1] > 255:
        raise ValueError(f"{name}: label_values must be in 0..255, got {label_values}")
    if name in DatasetCatalog.list():
        return

    def load():
        if ensure_prepared is not None:
            ensure_prepared()
        return load_zero_shot_sem_seg(
            image_root=image_root,
            label_root=label_root,
            split_file=split_file,
            marker_dir=marker_dir,
            prepare_command=prepare_command,
            image_ext=image_ext,
            label_ext=label_ext,
        )

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=list(class_set.class_names),
        seen_class_ids=class_set.seen_ids,
        unseen_class_ids=class_set.unseen_ids,
        class_set=class_set.key,
        ignore_label=ignore_label,
        evaluator_type=EVALUATOR_TYPE,
        class_embeddings_file=embeddings_file,
        image_root=image_root,
        sem_seg_root=label_root,
        split_file=split_file,
        prepare_command=prepare_command,
        label_lut=tuple(int(v) for v in label_lut) if label_lut is not None else None,
        label_values=label_values,
    )


def register_prepared_copy(
    prefix: str,
    settings: Sequence[Tuple[ZeroShotClassSet, Optional[Sequence[int]]]],
    paths: Dict,
    *,
    prepare_command: str,
    embeddings_file: Callable[[str], str],
    label_values: Optional[Sequence[int]] = None,
    splits: Sequence[str] = ("train", "val"),
) -> None:
    """Register ``{prefix}{class_set.key}_{split}`` for every (class_set, label_lut) setting and
    split of one prepared copy of a real dataset, whose layout ``paths`` gives (``prepared``,
    ``labels``, ``split_files`` per split, and ``images``: one folder, or one per split).
    ``embeddings_file`` maps a class-set key to its embedding table."""
    for class_set, label_lut in settings:
        for split in splits:
            images = paths["images"]
            register_zero_shot_sem_seg(
                f"{prefix}{class_set.key}_{split}",
                class_set=class_set,
                image_root=images[split] if isinstance(images, dict) else images,
                label_root=paths["labels"][split],
                split_file=paths["split_files"][split],
                marker_dir=paths["prepared"],
                prepare_command=prepare_command,
                embeddings_file=embeddings_file(class_set.key),
                image_ext=".jpg",
                label_ext=".png",
                label_lut=label_lut,
                label_values=label_values,
            )
