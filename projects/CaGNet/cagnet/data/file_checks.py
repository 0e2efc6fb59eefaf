# Copyright (c) CaGNet-D2 contributors.
"""Reading image and label files with errors that name the file, and the label-value check.

PIL's errors for a damaged image ("image file is truncated (174 bytes not processed)") name no
file. A label value that is neither a class index nor the ignore label would otherwise surface as
an IndexError in the loss a few iterations in, or be counted as something else by the evaluator:
the training mapper, the evaluator and self-training check every label map against the values
its dataset declares (``label_values`` in its metadata, see ``register_zero_shot_sem_seg``).
"""
from typing import Iterable, Sequence, Tuple

import numpy as np

__all__ = [
    "ImageReadError",
    "InvalidLabelError",
    "check_label_values",
    "class_index_table",
    "format_values",
    "label_value_table",
    "read_image_file",
]


class ImageReadError(OSError):
    """An image or label file that cannot be decoded (damaged, truncated, not an image)."""


class InvalidLabelError(ValueError):
    """A label file holds values that are neither a class index nor the ignore label."""


def read_image_file(path: str, format=None) -> np.ndarray:
    """detectron2's ``read_image``, with the file's path in the error."""
    from detectron2.data import detection_utils as utils

    try:
        return utils.read_image(path, format=format)
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL: OSError (truncated), UnidentifiedImageError, SyntaxError, ...
        raise ImageReadError(f"{path}: cannot decode this file as an image ({type(e).__name__}: {e}); "
                             "it is damaged, truncated or not an image") from e


def format_values(values: Iterable[int]) -> str:
    """Sorted integers as ranges: [0, 1, 2, 3, 255] -> '0..3, 255'."""
    values = sorted(set(int(v) for v in values))
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return ", ".join(parts)


def label_value_table(metas: Sequence) -> Tuple[np.ndarray, str]:
    """(256,) bool table of the values the label files of these datasets may hold (a value must be
    valid in all of them), and a sentence saying which they are and where they come from."""
    valid = np.ones(256, dtype=bool)
    for meta in metas:
        table = np.zeros(256, dtype=bool)
        table[list(dataset_label_values(meta))] = True
        valid &= table
    meta = metas[0]
    names = ", ".join(repr(m.name) for m in metas)
    ignore = getattr(meta, "ignore_label", 255)
    if getattr(meta, "label_lut", None) is None:
        source = (f"the {len(meta.stuff_classes)} class indices 0..{len(meta.stuff_classes) - 1} of its "
                  f"metadata stuff_classes and the ignore label {ignore}")
    else:
        source = "the values that its registration declares (label_values: raw values of its class set, ignore)"
    return valid, f"valid values in the label files of {names}: {format_values(np.nonzero(valid)[0])} ({source})"


def class_index_table(num_classes: int, ignore_label: int, what: str) -> Tuple[np.ndarray, str]:
    """The table of files that hold class indices (e.g. pseudo labels) and its description."""
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[ignore_label] = True
    return valid, f"{what} hold the class indices 0..{num_classes - 1} and the ignore label {ignore_label}"


def dataset_label_values(meta) -> Sequence[int]:
    values = getattr(meta, "label_values", None)
    if values is None:  # a dataset registered without them: class indices and ignore
        values = list(range(len(meta.stuff_classes))) + [getattr(meta, "ignore_label", 255)]
    return values


def check_label_values(label: np.ndarray, valid: np.ndarray, path: str, description: str) -> None:
    """Raise InvalidLabelError when ``label`` (uint8) holds a value that ``valid`` rejects."""
    bad = ~valid[label]
    if bad.any():
        values, counts = np.unique(label[bad], return_counts=True)
        shown = ", ".join(f"{v} ({c} px)" for v, c in zip(values[:8].tolist(), counts[:8].tolist()))
        raise InvalidLabelError(
            f"{path}: label values {shown}{' ...' if len(values) > 8 else ''} are neither a class index nor "
            f"the ignore label; {description}"
        )
