# Copyright (c) CaGNet-D2 contributors.
"""Random training batches in the model's input format, for benchmarks and smoke tests that must
not depend on a dataset being on disk."""
from typing import Dict, List, Sequence

import torch

__all__ = ["random_training_batch"]


def random_training_batch(
    num_images: int, height: int, width: int, class_ids: Sequence[int], ignore_label: int = 255, seed: int = 0
) -> List[Dict]:
    """Images with values in [0, 255] and label maps of 8x8-pixel blocks drawn from ``class_ids``
    (about 10% ignore)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.as_tensor(list(class_ids) + [ignore_label])
    batch = []
    for _ in range(num_images):
        blocks = ids[torch.randint(len(ids), ((height + 7) // 8, (width + 7) // 8), generator=g)]
        label = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:height, :width]
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        batch.append({"image": image, "sem_seg": label.long(), "height": height, "width": width})
    return batch
