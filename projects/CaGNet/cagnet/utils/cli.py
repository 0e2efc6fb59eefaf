# Copyright (c) CaGNet-D2 contributors.
"""What the command-line tools share: a frozen config from a file and KEY VALUE overrides, their
loggers, and errors about the user's input as one line."""
import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

import torch

from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

__all__ = ["load_config", "model_on_dataset_args", "run_main", "setup_logging"]


def load_config(config_file: str, opts: Sequence[str] = (), freeze: bool = True):
    """``get_cfg`` + the CaGNet keys + ``config_file`` + ``opts``, validated
    (:func:`cagnet.config_validation.validate_config`); CPU when CUDA is absent."""
    from cagnet import add_cagnet_config
    from cagnet.config_validation import validate_config

    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("cagnet").warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    from cagnet.data import apply_dataset_options

    apply_dataset_options(cfg)
    validate_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def model_on_dataset_args(description: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of the analysis tools that measure a trained model on a dataset's
    labelled pixels: --config-file, --dataset, --images, --seed, --json and KEY VALUE overrides
    (MODEL.WEIGHTS ...); a leading ``--`` before the overrides is dropped."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", help="labelled dataset (default: the config's first test dataset)")
    p.add_argument("--images", type=int, default=200, help="images to collect labelled pixels from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    args = p.parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    return args


def setup_logging(name: str = "cagnet") -> logging.Logger:
    """detectron2's and cagnet's loggers on stdout (once), and the named logger."""
    for logger_name in ("detectron2", "cagnet"):
        if not logging.getLogger(logger_name).handlers:
            setup_logger(name=logger_name)
    return logging.getLogger(name)


def run_main(main: Callable[[], int]) -> int:
    """Run a tool's ``main()``. An error about its input (a bad value, a missing or damaged file:
    ValueError, FileNotFoundError and the project's file errors) is printed as one line without a
    traceback, exit status 2; anything else keeps its traceback. The CPU allocator is tuned first
    (cagnet/engine/cpu_allocator.py), as in tools/train_net.py."""
    from cagnet.data.file_checks import ImageReadError
    from cagnet.engine.cpu_allocator import tune_cpu_allocator
    from cagnet.modeling.checkpoint_file import DamagedCheckpointError

    tune_cpu_allocator()
    try:
        return main()
    except (ValueError, FileNotFoundError, DamagedCheckpointError, ImageReadError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
