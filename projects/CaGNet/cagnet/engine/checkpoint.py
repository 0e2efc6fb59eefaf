# Copyright (c) CaGNet-D2 contributors.
"""A DetectionCheckpointer that never leaves a half-written checkpoint behind.

The file is written to a temporary name and renamed over the target (atomic on POSIX), and the
``last_checkpoint`` tag is updated the same way, only after the checkpoint is complete. A crash
while saving therefore keeps the previous checkpoint and its tag intact. A model that knows its
class list (``zero_shot_classes()``) stores it in the checkpoint, so that tools can rebuild it
without the training dataset (and with classes added after training).
"""
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_torch_save"]


def atomic_torch_save(data, path: str) -> None:
    """torch.save to a temporary file, fsync, then rename: ``path`` is never half written."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicCheckpointer(DetectionCheckpointer):
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
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)
