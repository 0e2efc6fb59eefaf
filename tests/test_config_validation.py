# Copyright (c) CaGNet-D2 contributors.
"""Config values are checked at setup: every shipped config passes; a value out of range is one
error naming every bad key, from the trainers, the tools' config loader and tools/train_net.py."""
import glob
import os

import pytest

from cagnet.config_validation import ConfigValueError, validate_config
from cagnet.engine import CaGNetTrainer, ZeroShotStagedTrainer
from cagnet.utils.cli import load_config

from _tool_helpers import load_tool
from conftest import REPO, TINY_CONFIG, tiny_cfg

CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("Base-"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "configs")))
def test_shipped_configs_are_valid(path):
    validate_config(load_config(path))


@pytest.mark.parametrize("key, value, expected", [
    ("SOLVER.CHECKPOINT_PERIOD", 0, "SOLVER.CHECKPOINT_PERIOD = 0: must be an integer >= 1"),
    ("MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION", 1.5, "MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION = 1.5: must be a number in [0, 1]"),
    ("MODEL.CAGNET.KL_WEIGHT", -1.0, "MODEL.CAGNET.KL_WEIGHT = -1.0: must be a number >= 0"),
    ("SOLVER.BASE_LR", -0.1, "SOLVER.BASE_LR = -0.1: must be a number >= 0"),
    ("MODEL.FEATURE_GENERATOR.DROPOUT", 1.0, "MODEL.FEATURE_GENERATOR.DROPOUT = 1.0: must be a number in [0, 1)"),
    ("MODEL.SELF_TRAINING.TOP_PERCENT", 150.0, "MODEL.SELF_TRAINING.TOP_PERCENT = 150.0: must be a number in [0, 100]"),
    ("INPUT.SCALE_RANGE", (1.5, 0.5), "INPUT.SCALE_RANGE = (1.5, 0.5): must be two numbers 0 < low <= high"),
    ("MODEL.CAGNET.REC_LOSS", "l1", "MODEL.CAGNET.REC_LOSS = 'l1': must be one of ['l2', 'mmd']"),
    ("SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", -2, "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK = -2: must be an integer >= 0"),
    ("MODEL.ASPP_L.OUT_CHANNELS", 0, "MODEL.ASPP_L.OUT_CHANNELS = 0: must be an integer >= 1"),
])
def test_a_value_out_of_range_is_named(key, value, expected):
    cfg = tiny_cfg(None, key, value)
    with pytest.raises(ConfigValueError) as e:
        validate_config(cfg)
    assert expected in str(e.value)


def test_every_bad_key_in_one_error_from_trainers_and_tools(tiny_scenes, tmp_path):
    opts = ["SOLVER.CHECKPOINT_PERIOD", 0, "MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION", 1.5]
    for build in (CaGNetTrainer, ZeroShotStagedTrainer):
        with pytest.raises(ConfigValueError, match="(?s)values:.*CHECKPOINT_PERIOD = 0.*FINETUNE_UNSEEN_FRACTION = 1.5"):
            build(tiny_cfg(tmp_path, *opts))
    with pytest.raises(ConfigValueError, match="CHECKPOINT_PERIOD = 0"):
        load_config(TINY_CONFIG, [str(v) for v in opts])


def test_train_net_prints_the_config_error_as_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # in this process: the check comes before any worker starts
        load_tool("train_net").cli(["--config-file", TINY_CONFIG, "SOLVER.CHECKPOINT_PERIOD", "0",
                                    "OUTPUT_DIR", str(tmp_path / "run")])
    out = capsys.readouterr().err
    assert e.value.code == 1
    assert out.startswith("error: Invalid config value:\n  SOLVER.CHECKPOINT_PERIOD = 0: must be an integer >= 1")
    assert not (tmp_path / "run").exists()  # refused before anything was written
