# Copyright (c) CaGNet-D2 contributors.
"""A DetectionCheckpointer that never leaves a half-written checkpoint behind, names a damaged
one, and resumes from the newest checkpoint that loads.

The file is written to a temporary name and renamed over the target (atomic on POSIX), and the
``last_checkpoint`` tag is updated the same way, only after the checkpoint is complete. A crash
while saving therefore keeps the previous checkpoint and its tag intact; a full disk raises
FileSaveError (cagnet/utils/atomic_file.py) with the path and the free space, and the run stops.
A model that knows its class list (``zero_shot_classes()``) stores it in the checkpoint, so that
tools can rebuild it without the training dataset (and with classes added after training).

Loading: a file that cannot be read raises DamagedCheckpointError with its path; a checkpoint
whose tensors have other shapes than the model's (another class-embedding table or class count)
raises CheckpointMismatchError before anything is loaded. On resume, when the tagged checkpoint
cannot be read (damaged by something outside this code: a full disk, a copy, a hand edit), the
next newest ``*.pth`` of the directory is tried, and each skipped file is logged with the reason;
skipped files are left where they are.
"""
import logging
import os
import re
from typing import List, Optional, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.checkpoint_file import (
    CheckpointMismatchError, DamagedCheckpointError, damaged, mismatch_message, shape_mismatches,
)
from ..utils.atomic_file import atomic_write

__all__ = ["AtomicCheckpointer", "atomic_torch_save"]

logger = logging.getLogger(__name__)


def atomic_torch_save(data, path: str) -> None:
    """torch.save to a temporary file, fsync, then rename: ``path`` is never half written. A failed
    write (a full disk) removes the temporary file and raises FileSaveError naming ``path``."""
    with atomic_write(path) as f:
        torch.save(data, f)


def _newest_first(names: List[str]) -> List[str]:
    """model_final.pth first, then numbered checkpoints from the highest number, then the rest."""
    def key(name):
        if name == "model_final.pth":
            return (0, 0, name)
        m = re.fullmatch(r"model_(\d+)\.pth", name)
        return (1, -int(m.group(1)), name) if m else (2, 0, name)

    return sorted(names, key=key)


class AtomicCheckpointer(DetectionCheckpointer):
    # The checkpoint loaded or saved last by this checkpointer (None: none yet).
    last_good: Optional[str] = None
    # The error of a save that failed (a full disk): the run must not go on as if it had saved.
    save_failed: Optional[Exception] = None

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        model = getattr(self.model, "module", self.model)
        if hasattr(model, "zero_shot_classes"):
            data["zero_shot_classes"] = model.zero_shot_classes()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            atomic_torch_save(data, path)
            self.tag_last_checkpoint(basename)
        except Exception as e:
            self.save_failed = e
            raise
        self.last_good = path

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    # ------------------------------------------------------------------ loading
    def _load_file(self, filename):
        self._loading = filename
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch / pickle: RuntimeError, EOFError, UnpicklingError, ...
            raise damaged(filename, e) from e

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            bad = shape_mismatches(self.model.state_dict(), checkpoint["model"])
            if bad:
                raise CheckpointMismatchError(mismatch_message(getattr(self, "_loading", "The checkpoint"), bad))
        return super()._load_model(checkpoint)

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path} does not exist (MODEL.WEIGHTS or OUTPUT_DIR/last_checkpoint)")
        try:
            ret = super().load(path, *args, **kwargs)
        except Exception:
            self._parsed_url_during_load = None  # detectron2 resets it only after a successful load
            raise
        if path and self.save_dir and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.save_dir):
            self.last_good = path  # a checkpoint of this run (not MODEL.WEIGHTS it started from)
        return ret

    def resume_candidates(self) -> List[Tuple[str, Optional[str]]]:
        """(path, why it cannot be used or None) of the checkpoints to resume from, in order: the
        tagged one, then the other ``*.pth`` of the directory, newest first."""
        tagged = self.get_checkpoint_file()
        out = []
        if tagged and os.path.isfile(tagged):
            out.append((tagged, None))
        else:
            out.append((os.path.join(self.save_dir, "last_checkpoint"),
                        f"it names {os.path.basename(tagged) or 'nothing'!r}, which does not exist"))
        names = [n for n in os.listdir(self.save_dir) if n.endswith(".pth") and os.path.isfile(os.path.join(self.save_dir, n))]
        out += [(os.path.join(self.save_dir, n), None) for n in _newest_first(names)
                if os.path.join(self.save_dir, n) != tagged]
        return out

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        skipped = []
        for candidate, problem in self.resume_candidates():
            if problem is None:
                try:
                    ret = self.load(candidate)
                except DamagedCheckpointError as e:
                    problem = str(e)
                else:
                    if skipped:
                        logger.warning(f"Resuming from {candidate}, the newest checkpoint that loads")
                    return ret
            skipped.append(candidate)
            logger.warning(f"Skipping {problem if problem.startswith(candidate) else f'{candidate}: {problem}'} "
                           "(the file is left in place)")
        raise DamagedCheckpointError(
            f"No checkpoint in {self.save_dir} can be read to resume from (skipped: {', '.join(skipped)}). "
            "Start a new run (another OUTPUT_DIR, or OVERWRITE_OUTPUT_DIR True) or restore a checkpoint."
        )
