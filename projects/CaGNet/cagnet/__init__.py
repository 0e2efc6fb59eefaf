# Copyright (c) CaGNet-D2 contributors.
"""CaGNet-D2: zero-shot semantic segmentation by context-aware feature generation (ACM MM 2020).

Importing the package registers the meta-architecture, the backbone and the datasets.
"""
from .utils import path_handler  # noqa: F401  (cagnet:// paths)
from . import data, modeling  # noqa: F401  (registration on import)
from .config import add_cagnet_config
from .evaluation import ZeroShotSemSegEvaluator

__all__ = ["add_cagnet_config", "ZeroShotSemSegEvaluator"]
