# Copyright (c) CaGNet-D2 contributors.
"""What datasets/prepare_*.py share: atomic label writes, a resumable worker pool, the split lists
and the completion marker.

A prepare run
  1. checks its inputs (a missing one is an error that names the path),
  2. removes the completion marker, so that the copy reads as unfinished until step 4,
  3. converts every label file that is not there yet (each is written to a temporary name and
     renamed, so a file under its final name is always complete; a killed run resumes where it
     stopped),
  4. writes the split lists and, last, the marker (``cagnet.data.register.PREPARED_MARKER``).
A state file records the input kind and format version of the files being written; a run with
another input kind or version, or with ``--force``, rewrites every file.
"""
import json
import multiprocessing as mp
import os
import shutil
import sys
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from cagnet.data.register import PREPARED_MARKER, write_prepared_marker

__all__ = [
    "FORMAT_VERSION",
    "add_common_arguments",
    "begin",
    "check_images",
    "cli",
    "decode_segmentation",
    "finish",
    "read_label_png",
    "read_split_list",
    "require",
    "run_tasks",
    "write_label_png",
]

FORMAT_VERSION = 1
STATE_FILE = ".cagnet_prepare_state.json"
README_HINT = "See datasets/README.md for where to download it and the expected tree."


def add_common_arguments(parser, default_root: str) -> None:
    parser.add_argument("--root", default=default_root,
                        help="datasets root (default: $DETECTRON2_DATASETS or 'datasets'): %(default)s")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (0 or 1: in this process); default %(default)s")
    parser.add_argument("--force", action="store_true", help="rewrite every output file")


def require(paths: Iterable[str], what: str) -> None:
    """Raise FileNotFoundError naming the first missing path (and how many are missing)."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{what} not found: {missing[0]}{more}\n{README_HINT}")


def check_images(image_dir: str, stems: Sequence[str], ext: str = ".jpg") -> None:
    require([image_dir], "Image directory")
    require([os.path.join(image_dir, s + ext) for s in stems], "Image")


def read_split_list(path: str) -> List[str]:
    """File stems of a split list: one per line; the first token of a line is used, and a path
    there ("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png", DeepLab's
    format) gives its stem."""
    require([path], "Split list")
    stems = []
    with open(path) as f:
        for line in f:
            token = line.split()[0] if line.split() else ""
            if token:
                stems.append(os.path.splitext(os.path.basename(token))[0])
    if not stems:
        raise ValueError(f"Split list {path} is empty")
    return stems


def read_label_png(path: str) -> np.ndarray:
    """Class values of a label PNG: grayscale values, or the palette indices of a palette PNG."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(
                f"{path}: a label PNG must be grayscale (mode L) or a palette PNG (mode P), not "
                f"{img.mode}; a colour rendering of the labels cannot be converted"
            )
        return np.array(img, dtype=np.uint8)


def write_label_png(path: str, label: np.ndarray) -> None:
    """Write a uint8 label map as a grayscale PNG, atomically (temporary name, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    label = np.ascontiguousarray(label, dtype=np.uint8)
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must be 2-D, got shape {label.shape}")
    Image.fromarray(label).save(tmp, format="PNG")
    os.replace(tmp, path)


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Binary (H, W) mask of a COCO-style segmentation: polygons, uncompressed or compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():
        # pycocotools 2.0.11's compiled decode trips numpy 2's __array__(copy=) deprecation
        # inside itself; the result is right.
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        return mask_utils.decode(rle)


def _read_json(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def begin(prepared_dir: str, output_dirs: Sequence[str], state: Dict, force: bool) -> None:
    """Mark the copy unfinished, and clear its outputs when they were made differently."""
    os.makedirs(prepared_dir, exist_ok=True)
    state = dict(state, format_version=FORMAT_VERSION)
    marker = os.path.join(prepared_dir, PREPARED_MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    state_path = os.path.join(prepared_dir, STATE_FILE)
    old = _read_json(state_path)
    if force or (old is not None and old != state):
        if old is not None and old != state and not force:
            print(f"[prepare] outputs in {prepared_dir} were made from {old}; rewriting them for {state}")
        for d in output_dirs:
            shutil.rmtree(d, ignore_errors=True)
    _atomic_write_text(state_path, json.dumps(state, sort_keys=True))
    for d in output_dirs:
        os.makedirs(d, exist_ok=True)
        for folder, _, names in os.walk(d):  # leftovers of a killed run (file names may hold folders)
            for name in names:
                if name.endswith(".tmp"):
                    os.remove(os.path.join(folder, name))


def run_tasks(fn: Callable[[Tuple], None], tasks: Sequence[Tuple], workers: int, desc: str) -> int:
    """Run ``fn(task)`` for each task whose output (``task[0]``) does not exist yet.

    ``fn`` must be a module-level function (it is sent to worker processes). Returns how many
    tasks ran; the others were finished by an earlier run.
    """
    todo = [t for t in tasks if not os.path.exists(t[0])]
    skipped = len(tasks) - len(todo)
    if skipped:
        print(f"[prepare] {desc}: {skipped} of {len(tasks)} files are already done")
    if not todo:
        return 0
    bar = tqdm(total=len(todo), desc=desc, unit="file", file=sys.stderr)
    if workers <= 1:
        for task in todo:
            fn(task)
            bar.update(1)
    else:
        chunksize = max(1, min(64, len(todo) // (4 * workers)))
        with mp.Pool(workers) as pool:
            for _ in pool.imap_unordered(fn, todo, chunksize=chunksize):
                bar.update(1)
    bar.close()
    return len(todo)


def finish(prepared_dir: str, split_lists: Dict[str, List[str]], info: Dict) -> None:
    """Write the split lists (path -> stems), then the completion marker, last."""
    for path, stems in split_lists.items():
        _atomic_write_text(path, "".join(s + "\n" for s in stems))
    state = _read_json(os.path.join(prepared_dir, STATE_FILE)) or {}
    write_prepared_marker(prepared_dir, dict(state, **info))
    print(f"[prepare] done: {prepared_dir}")


def cli(main: Callable) -> None:
    """Run ``main()``; input errors end the script with their message instead of a traceback."""
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
