# Copyright (c) CaGNet-D2 contributors.
"""Reading checkpoint files, with errors that name the file and say what is wrong with it.

torch's own errors for a damaged file ("failed finding central directory" for a truncated one,
a bare EOFError for an empty one) name neither the file nor the cause; a checkpoint of another
config loads with "Skip loading parameter" warnings and fails later on a tensor size.
"""
import os
from typing import Dict, List, Mapping

import torch

__all__ = ["DamagedCheckpointError", "CheckpointMismatchError", "read_checkpoint_file", "shape_mismatches",
           "mismatch_message"]


class DamagedCheckpointError(OSError):
    """The file cannot be read as a checkpoint (truncated, empty, not a checkpoint)."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model of the config."""


def damaged(path: str, error: BaseException) -> DamagedCheckpointError:
    size = os.path.getsize(path) if os.path.isfile(path) else None
    what = "empty" if size == 0 else (f"{size} bytes" if size is not None else "missing")
    reason = str(error).split(". ")[0].rstrip(".")  # torch adds paragraphs of generic advice
    return DamagedCheckpointError(
        f"{path} ({what}) cannot be read as a checkpoint ({type(error).__name__}: {reason}): the file is "
        "damaged (truncated, e.g. by a full disk or an interrupted copy, or empty) or not a PyTorch checkpoint"
    )


def read_checkpoint_file(path: str, weights_only: bool = True) -> Dict:
    """torch.load on the CPU; a file that cannot be read raises DamagedCheckpointError naming it."""
    from detectron2.utils.file_io import PathManager

    try:
        with PathManager.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damage
        raise damaged(path, e) from e


def shape_mismatches(own: Mapping[str, torch.Tensor], saved: Mapping) -> List[str]:
    """'name: shape in the checkpoint vs in the model' for every tensor both have in other shapes."""
    return [
        f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        for k, v in saved.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]


def mismatch_message(path: str, mismatches: List[str], missing: List[str] = ()) -> str:
    parts = list(mismatches) + [f"{k}: missing" for k in missing]
    hint = ""
    if any(m.startswith("class_embeddings:") for m in mismatches):
        hint = (" The class-embedding table differs (its size is the embedding dimension by the number of "
                "classes): MODEL.CAGNET.EMBEDDINGS_FILE or DATASETS.TRAIN differ from the training run's.")
    return (
        f"{path} does not fit the model of this config ({len(mismatches)} tensors of other shapes"
        + (f", {len(missing)} missing" if missing else "") + f"; {'; '.join(parts[:3])}).{hint} Use the config "
        "the checkpoint was trained with (OUTPUT_DIR/config.yaml of the training run), or another OUTPUT_DIR."
    )
