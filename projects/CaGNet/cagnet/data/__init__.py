# Copyright (c) CaGNet-D2 contributors.
from . import datasets  # noqa: F401  (registers the datasets)
from .catalog import ZeroShotClassSet
from .dataset_mapper import ZeroShotSemSegDatasetMapper, seen_label_lut
from .register import DatasetNotPreparedError, datasets_root, register_zero_shot_sem_seg
from .datasets.register_synthetic_scenes import apply_synthetic_scenes_variant


def apply_dataset_options(cfg) -> None:
    """Register what dataset keys of a loaded config select (variants of the built-in dataset);
    the tools call it after merging a config, before building anything from it."""
    apply_synthetic_scenes_variant(cfg)
