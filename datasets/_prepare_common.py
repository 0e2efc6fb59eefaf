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

Each worker task decodes the image of its label once and checks that both have the same size,
and checks every raw label value against the values the source format defines (``LabelMapping``):
a value outside them is an error naming the file, the values and the format (``--invalid-labels
ignore`` maps them to ignore instead, and counts them). Faulty files are collected, not written,
and reported together at the end; the marker is then not written. Each split's summary says how
many pixels were written as ignore (or background), by raw value.
"""
import functools
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import warnings
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from cagnet.data.register import PREPARED_MARKER, write_prepared_marker

__all__ = [
    "FORMAT_VERSION",
    "LabelMapping",
    "PrepareInputError",
    "add_common_arguments",
    "begin",
    "check_image",
    "check_images",
    "cli",
    "convert_label",
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
    parser.add_argument("--invalid-labels", choices=("error", "ignore"), default="error",
                        help="raw label values that the format does not define: an error naming the file "
                             "(default), or mapped to ignore (255) and counted")


class PrepareInputError(ValueError):
    """A fault of one input file; the message names it."""


class LabelMapping:
    """Raw label value -> prepared value, and which raw values the source format defines.

    ``lut`` and ``valid`` have one entry per raw value 0..N-1 (raw values outside are invalid);
    ``description`` says which values are valid and where that comes from; pixels written as
    ``counted_value`` (``counted_name``) are counted by raw value in the summary.
    """

    def __init__(self, lut: np.ndarray, valid: Sequence[int], description: str, counted_value: int = 255,
                 counted_name: str = "ignore"):
        self.lut = np.asarray(lut, dtype=np.uint8)
        self.valid = np.zeros(len(self.lut), dtype=bool)
        self.valid[list(valid)] = True
        self.description = description
        self.counted_value, self.counted_name = counted_value, counted_name


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
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise PrepareInputError(
                    f"{path}: a label PNG must be grayscale (mode L) or a palette PNG (mode P), not "
                    f"{img.mode}; a colour rendering of the labels cannot be converted"
                )
            return np.array(img, dtype=np.uint8)
    except PrepareInputError:
        raise
    except Exception as e:  # PIL: OSError (truncated), UnidentifiedImageError, ...
        raise PrepareInputError(f"{path}: cannot decode this label PNG ({type(e).__name__}: {e}); it is damaged, "
                                "truncated or not a PNG") from e


def check_image(image_path: str, label_shape: Tuple[int, int], label_source: str) -> None:
    """Decode the image once and compare its size with its label's (height, width)."""
    try:
        with Image.open(image_path) as img:
            img.load()
            width, height = img.size
    except Exception as e:  # PIL: OSError (truncated), UnidentifiedImageError, ...
        raise PrepareInputError(f"{image_path}: cannot decode this image ({type(e).__name__}: {e}); it is "
                                "damaged, truncated or not an image") from e
    if (height, width) != tuple(label_shape):
        raise PrepareInputError(f"{label_source} is {label_shape[1]}x{label_shape[0]} (width x height) but its "
                                f"image {image_path} is {width}x{height}")


def convert_label(dst: str, raw: np.ndarray, mapping: LabelMapping, image: str, source: str,
                  options: Dict) -> Dict:
    """Check image and raw values, map, write ``dst``; returns this file's pixel counts."""
    check_image(image, raw.shape[:2], source)
    raw = np.asarray(raw)
    n = len(mapping.lut)
    inside = (raw >= 0) & (raw < n)
    index = np.where(inside, raw, 0).astype(np.int64)
    invalid = ~inside | ~mapping.valid[index]
    bad = Counter()
    if invalid.any():
        values, counts = np.unique(raw[invalid], return_counts=True)
        bad = Counter(dict(zip(values.tolist(), counts.tolist())))
        if options.get("invalid_labels", "error") != "ignore":
            shown = ", ".join(f"{v} ({c} px)" for v, c in list(bad.items())[:8])
            raise PrepareInputError(
                f"{source}: raw label values {shown}{' ...' if len(bad) > 8 else ''} are not defined by the "
                f"format; {mapping.description}. Fix the file, or pass --invalid-labels ignore to map them to 255"
            )
    label = mapping.lut[index]
    label[invalid] = 255
    counted = (label == mapping.counted_value) & ~invalid
    values, counts = np.unique(raw[counted], return_counts=True)
    write_label_png(dst, label)
    return {"pixels": int(raw.size), "counted": Counter(dict(zip(values.tolist(), counts.tolist()))), "invalid": bad}


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


def _run_one(fn: Callable, options: Dict, task: Tuple):
    try:
        return fn(task, options), None
    except PrepareInputError as e:
        return None, str(e)


def _default_signals() -> None:
    """Pool workers end on SIGTERM and SIGINT whatever handlers the parent had installed (a forked
    worker inherits them; Pool.terminate() would then wait for a worker that ignores its SIGTERM)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which terminates the pool


def run_tasks(fn: Callable[[Tuple, Dict], Optional[Dict]], tasks: Sequence[Tuple], workers: int, desc: str,
              options: Optional[Dict] = None, mapping: Optional[LabelMapping] = None) -> int:
    """Run ``fn(task, options)`` for each task whose output (``task[0]``) does not exist yet.

    ``fn`` must be a module-level function (it is sent to worker processes); it returns the
    pixel counts of ``convert_label`` (summarised with ``mapping``) or raises PrepareInputError,
    which is collected: after all tasks, the faults are raised together. Returns how many tasks
    ran; the others were finished by an earlier run.
    """
    todo = [t for t in tasks if not os.path.exists(t[0])]
    skipped = len(tasks) - len(todo)
    if skipped:
        print(f"[prepare] {desc}: {skipped} of {len(tasks)} files are already done")
    if not todo:
        return 0
    run = functools.partial(_run_one, fn, dict(options or {}))
    bar = tqdm(total=len(todo), desc=desc, unit="file", file=sys.stderr)
    results = []
    if workers <= 1:
        for task in todo:
            results.append(run(task))
            bar.update(1)
    else:
        chunksize = max(1, min(64, len(todo) // (4 * workers)))
        with mp.Pool(workers, initializer=_default_signals) as pool:
            for result in pool.imap_unordered(run, todo, chunksize=chunksize):
                results.append(result)
                bar.update(1)
    bar.close()
    errors = sorted(e for _, e in results if e)
    if mapping is not None:
        _summarise(desc, [r for r, _ in results if r], mapping)
    if errors:
        raise PrepareInputError(
            f"{len(errors)} of {len(todo)} {desc} files cannot be prepared (the others are written; the dataset "
            f"is not marked prepared until a run without faults):\n  " + "\n  ".join(errors[:10])
            + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
        )
    return len(todo)


def convert_split(fn: Callable[[Tuple, Dict], Optional[Dict]], tasks: Sequence[Tuple], stems: Sequence[str],
                  image_dir: str, workers: int, desc: str, options: Optional[Dict] = None,
                  mapping: Optional[LabelMapping] = None) -> int:
    """One split of a dataset: check that every stem has its image in ``image_dir``, add the image
    path to each task (``(dst, source, ...)`` in stem order), and :func:`run_tasks` them."""
    check_images(image_dir, stems)
    tasks = [t + (os.path.join(image_dir, stem + ".jpg"),) for t, stem in zip(tasks, stems)]
    return run_tasks(fn, tasks, workers, desc, options=options, mapping=mapping)


def _summarise(desc: str, stats: List[Dict], mapping: LabelMapping) -> None:
    pixels = sum(s["pixels"] for s in stats)
    counted, invalid = Counter(), Counter()
    for s in stats:
        counted.update(s["counted"])
        invalid.update(s["invalid"])
    if not pixels:
        return
    total = sum(counted.values())
    by_value = ", ".join(f"raw {v}: {n}" for v, n in counted.most_common(6))
    print(f"[prepare] {desc}: {total} of {pixels} pixels ({100 * total / pixels:.2f}%) written as "
          f"{mapping.counted_name} ({mapping.counted_value})" + (f"; {by_value}" if by_value else "")
          + (" ..." if len(counted) > 6 else ""))
    if invalid:
        n = sum(invalid.values())
        print(f"[prepare] {desc}: {n} pixels of undefined raw values written as ignore (255) "
              f"(--invalid-labels ignore): " + ", ".join(f"raw {v}: {c}" for v, c in invalid.most_common(6)))


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
