# Copyright (c) CaGNet-D2 contributors.
"""A training loader that can resume exactly where a stopped run left off.

The sampler is detectron2's infinite shuffled stream (same seed on every worker), started at the
number of samples this worker already consumed. Each sample also gets an augmentation seed
derived from the run seed and its position in the stream, so crops and flips after ``--resume``
are the ones the uninterrupted run would have drawn.
"""
import itertools

import torch.utils.data as torchdata

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "build_resumable_train_loader"]


class ResumableTrainingSampler(TrainingSampler):
    """Yields ``(index, position)``: detectron2's stream for this worker, from ``start`` on."""

    def __init__(self, size: int, seed: int, start: int = 0):
        super().__init__(size, shuffle=True, seed=seed)
        self._start = start

    def __iter__(self):
        positions = itertools.count(self._start)
        yield from zip(itertools.islice(super().__iter__(), self._start, None), positions)


class _SeededSamples(torchdata.Dataset):
    """Maps ``(index, position)`` to ``mapper(record)`` with a per-position augmentation seed."""

    def __init__(self, records, mapper, seed: int, rank: int):
        self.records, self.mapper, self.seed, self.rank = records, mapper, seed, rank

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        index, position = key
        record = dict(self.records[index])
        record["aug_seed"] = (self.seed * 1_000_003 + self.rank * 7_919 + position) % (2**32)
        return self.mapper(record)


def build_resumable_train_loader(cfg, mapper, *, seed: int, start_batch: int = 0, records=None):
    """Training loader over ``cfg.DATASETS.TRAIN`` (or ``records``) after ``start_batch`` batches."""
    from detectron2.utils import comm

    if records is None:
        records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    batch_per_worker = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = ResumableTrainingSampler(len(records), seed=seed, start=start_batch * batch_per_worker)
    dataset = _SeededSamples(records, mapper, seed, comm.get_rank())
    return build_detection_train_loader(
        dataset,
        mapper=None,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
