# Copyright (c) CaGNet-D2 contributors.
"""Shared fixtures: a tiny built-in dataset on disk and tiny configs (CPU, seconds)."""
import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

from detectron2.config import get_cfg  # noqa: E402

import cagnet  # noqa: E402,F401  (registrations)
from cagnet import add_cagnet_config  # noqa: E402
from cagnet.data.datasets.register_synthetic_scenes import register_synthetic_scenes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "synthetic_scenes", "cagnet_tiny_synthetic_scenes.yaml")
# A small copy of the built-in dataset, generated once per test session.
TINY_GENERATION = {"version": None, "seed": 0, "num_train": 12, "num_val": 6, "image_size": 48}

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory):
    """Registers ``tiny_scenes_train`` / ``tiny_scenes_val`` (generated on first load)."""
    from cagnet.data import synthetic_scenes

    root = str(tmp_path_factory.mktemp("datasets") / "tiny_scenes")
    generation = dict(TINY_GENERATION, version=synthetic_scenes.VERSION)
    register_synthetic_scenes(root, prefix="tiny_scenes", generation=generation)
    return root


def tiny_cfg(output_dir=None, *opts):
    """The built-in config shrunk further, on the tiny dataset."""
    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", ("tiny_scenes_train",),
            "DATASETS.TEST", ("tiny_scenes_val",),
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.MAX_ITER", 8,
            "SOLVER.PHASES.TRAINING_ONLY_ITERS", 2,
            "SOLVER.PHASES.TRAINING_BLOCK", 2,
            "SOLVER.PHASES.FINETUNING_BLOCK", 2,
            "DATALOADER.NUM_WORKERS", 0,
            "MODEL.ASPP_L.OUT_CHANNELS", 16,
            "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", [32],
            "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", 32,
            "OUTPUT_DIR", str(output_dir or "/tmp/cagnet_test_output"),
            *opts,
        ]
    )
    return cfg
