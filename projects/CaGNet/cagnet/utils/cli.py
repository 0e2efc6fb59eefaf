# Copyright (c) CaGNet-D2 contributors.
"""What the command-line tools share: a frozen config from a file and KEY VALUE overrides, and
their loggers."""
import logging
from typing import Sequence

import torch

from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

__all__ = ["load_config", "setup_logging"]


def load_config(config_file: str, opts: Sequence[str] = (), freeze: bool = True):
    """``get_cfg`` + the CaGNet keys + ``config_file`` + ``opts``; CPU when CUDA is absent."""
    from cagnet import add_cagnet_config

    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("cagnet").warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    from cagnet.data import apply_dataset_options

    apply_dataset_options(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def setup_logging(name: str = "cagnet") -> logging.Logger:
    """detectron2's and cagnet's loggers on stdout (once), and the named logger."""
    for logger_name in ("detectron2", "cagnet"):
        if not logging.getLogger(logger_name).handlers:
            setup_logger(name=logger_name)
    return logging.getLogger(name)
