# Copyright (c) CaGNet-D2 contributors.
from . import datasets  # noqa: F401  (registers the datasets)
from .catalog import ZeroShotClassSet
from .dataset_mapper import ZeroShotSemSegDatasetMapper, seen_label_lut
from .register import DatasetNotPreparedError, datasets_root, register_zero_shot_sem_seg
