# Copyright (c) CaGNet-D2 contributors.
"""A new training run does not overwrite another run's results by accident.

detectron2 trains into an OUTPUT_DIR that holds a previous run's checkpoints without a word: it
replaces the checkpoints of the same names, leaves later ones mixed in and appends to its
metrics.json. Here such a directory is refused unless the run resumes (``--resume``) or the
config says ``OVERWRITE_OUTPUT_DIR True``; then the previous run's checkpoints, its
``last_checkpoint`` tag, its derived state (``calibration/`` of SPNet-c, ``pseudo_labels/`` of
self-training) are deleted and its metrics.json emptied before the new run starts.
"""
import logging
import os
import re
import shutil
from typing import List

from detectron2.utils import comm

__all__ = ["OutputDirInUseError", "check_output_dir", "previous_run_files"]

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"model_(\d+|final)\.pth")
DERIVED_DIRS = ("calibration", "pseudo_labels")  # state a run makes before it trains


class OutputDirInUseError(FileExistsError):
    pass


def previous_run_files(output_dir: str) -> List[str]:
    """Names of the checkpoints (and their tag) of a training run in ``output_dir``."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if n == "last_checkpoint" or _CHECKPOINT.fullmatch(n))


def check_output_dir(cfg, resume: bool, clear: bool = False) -> None:
    """Raise OutputDirInUseError when a new (not resumed) run would train into a previous run's
    OUTPUT_DIR without ``OVERWRITE_OUTPUT_DIR``. With that key and ``clear``, the main process
    deletes the previous run's files first."""
    if resume:
        return
    out = cfg.OUTPUT_DIR
    found = previous_run_files(out)
    if not found:
        return
    if not cfg.get("OVERWRITE_OUTPUT_DIR", False):
        raise OutputDirInUseError(
            f"OUTPUT_DIR {out} holds a previous run's checkpoints ({', '.join(found[:4])}"
            f"{', ...' if len(found) > 4 else ''}). Continue that run with --resume, train into another "
            "OUTPUT_DIR, or set OVERWRITE_OUTPUT_DIR True to delete them and train from scratch."
        )
    if not clear:
        return
    if comm.is_main_process():
        for name in found:
            os.remove(os.path.join(out, name))
        for name in DERIVED_DIRS:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        metrics = os.path.join(out, "metrics.json")
        if os.path.isfile(metrics):
            # Emptied, not deleted: this run's JSONWriter may hold it open for appending.
            os.truncate(metrics, 0)
        logger.warning(f"OVERWRITE_OUTPUT_DIR: deleted the previous run's {', '.join(found)} in {out}")
    comm.synchronize()
