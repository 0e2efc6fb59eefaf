# Copyright (c) CaGNet-D2 contributors.
"""Shared fixtures: a tiny built-in dataset on disk and tiny configs (CPU, seconds)."""
import atexit
import os
import shutil
import tempfile
import warnings

import pytest
import torch

# Hermetic data root for the whole session (and for the tools the tests start): set before
# cagnet registers its datasets.
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="cagnet_test_datasets_")
atexit.register(shutil.rmtree, os.environ["DETECTRON2_DATASETS"], ignore_errors=True)
warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

from detectron2.config import get_cfg  # noqa: E402

import cagnet  # noqa: E402,F401  (registrations)
from cagnet import add_cagnet_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "synthetic_scenes", "cagnet_tiny_synthetic_scenes.yaml")

torch.set_num_threads(min(2, torch.get_num_threads()))
from cagnet.engine.cpu_allocator import tune_cpu_allocator  # noqa: E402

tune_cpu_allocator()  # as the tools do (cagnet/engine/cpu_allocator.py): fewer page faults per step


@pytest.fixture(scope="session")
def tiny_scenes():
    """The built-in miniature dataset ``synthetic_scenes_mini_{train,val}`` (generated on first load)."""
    return os.path.join(os.environ["DETECTRON2_DATASETS"], "synthetic_scenes_mini")


def load_cpu_config(path):
    """A config file as a user would load it, on the CPU."""
    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def tiny_cfg(output_dir=None, *opts):
    """The built-in config shrunk further, on the tiny dataset."""
    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", ("synthetic_scenes_mini_train",),
            "DATASETS.TEST", ("synthetic_scenes_mini_val",),
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.MAX_ITER", 8,
            "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 2,
            "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", 2,
            "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", 2,
            "DATALOADER.NUM_WORKERS", 0,
            "MODEL.ASPP_L.OUT_CHANNELS", 16,
            "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", [32],
            "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", 32,
            "MODEL.CAGNET.FINETUNE_PIXELS", 256,
            "OUTPUT_DIR", str(output_dir or "/tmp/cagnet_test_output"),
            *opts,
        ]
    )
    return cfg


def run_tool(script, *args, timeout=600, returncode=0):
    """Run ``tools/<script>`` (or ``<script>``, a path from the repository root, when it has a
    folder: "dev/pretrain_backbone.py") with the test environment; returns its stdout + stderr
    (fails with its log unless it exits with ``returncode``)."""
    import subprocess
    import sys

    path = os.path.join(REPO, *(script.split("/") if "/" in script else ["tools", script]))
    proc = subprocess.run(
        [sys.executable, path, *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == returncode, (f"{script} exited with {proc.returncode}, expected {returncode}:\n"
                                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr
