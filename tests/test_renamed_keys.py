# Copyright (c) CaGNet-D2 contributors.
"""Renamed config keys (cagnet.config.RENAMED_KEYS): for one release the old name is read, from a
config file, its _BASE_ and an override list, by tools/train_net.py and the tools' loader, with a
warning naming both names; both names at once is a one-line error."""
import argparse
import os

import pytest

from cagnet.config import RENAMED_CONFIG_PREFIXES, RENAMED_KEYS
from cagnet.config_validation import ConfigValueError
from cagnet.utils.cli import load_config

from _tool_helpers import LogRecords, load_tool
from conftest import REPO, TINY_CONFIG, tiny_cfg

OLD, NEW = "MODEL.CONTEXTUAL_MODULE.DETACH_INPUT", "MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT"


def _yaml(path, base, **contextual_module):
    body = "".join(f"    {k}: {v}\n" for k, v in contextual_module.items())
    path.write_text(f"_BASE_: {base}\nMODEL:\n  CONTEXTUAL_MODULE:\n{body}")
    return str(path)


def _value(cfg):
    assert "DETACH_INPUT" not in cfg.MODEL.CONTEXTUAL_MODULE
    return cfg.MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT


def test_the_table_names_existing_keys():
    cfg = tiny_cfg()
    assert RENAMED_KEYS[OLD] == NEW
    for old, new in RENAMED_KEYS.items():
        node = cfg
        for part in new.split("."):
            node = node[part]  # the new key exists
        assert old.rsplit(".", 1)[-1] not in cfg.MODEL.CONTEXTUAL_MODULE


def test_old_key_in_a_file_overrides_its_base_with_a_warning(tmp_path):
    assert _value(load_config(TINY_CONFIG)) is True  # the base sets the new key
    path = _yaml(tmp_path / "old.yaml", TINY_CONFIG, DETACH_INPUT=False)
    with LogRecords() as logs:
        cfg = load_config(path)
    assert _value(cfg) is False
    assert f"{path}: {OLD} is renamed {NEW}" in logs.text()


def test_old_key_in_a_base_file_is_renamed_and_the_child_overrides_it(tmp_path):
    base = _yaml(tmp_path / "base.yaml", TINY_CONFIG, DETACH_INPUT=False)
    assert _value(load_config(_yaml(tmp_path / "child.yaml", base, SERIAL=True))) is False
    assert _value(load_config(_yaml(tmp_path / "child2.yaml", base, DETACH_CONTEXT_BRANCH_INPUT=True))) is True


def test_old_key_in_overrides_with_a_warning():
    with LogRecords() as logs:
        cfg = load_config(TINY_CONFIG, [OLD, "False"])
    assert _value(cfg) is False
    assert f"overrides: {OLD} is renamed {NEW}" in logs.text()
    assert _value(tiny_cfg(None, OLD, False)) is False  # get_cfg + add_cagnet_config + merge_from_list


def test_train_net_reads_the_old_key_from_file_and_overrides(tmp_path):
    train_net = load_tool("train_net")
    path = _yaml(tmp_path / "old.yaml", TINY_CONFIG, DETACH_INPUT=False)
    assert _value(train_net.load_cfg(argparse.Namespace(config_file=path, opts=[]))) is False
    assert _value(train_net.load_cfg(argparse.Namespace(config_file=path, opts=[OLD, "True"]))) is True
    assert _value(train_net.load_cfg(argparse.Namespace(config_file=path, opts=[NEW, "True"]))) is True


def test_both_names_at_once_is_an_error(tmp_path):
    path = _yaml(tmp_path / "both.yaml", TINY_CONFIG, DETACH_INPUT=False, DETACH_CONTEXT_BRANCH_INPUT=True)
    with pytest.raises(ConfigValueError, match=f"{path}: both {OLD} .the old name. and {NEW} are given; keep {NEW}"):
        load_config(path)
    with pytest.raises(ConfigValueError, match=f"overrides: both {OLD} .the old name. and {NEW} are given"):
        load_config(TINY_CONFIG, [OLD, "False", NEW, "True"])
    with pytest.raises(ConfigValueError, match="both"):
        load_tool("train_net").load_cfg(argparse.Namespace(config_file=TINY_CONFIG, opts=[NEW, "True", OLD, "False"]))


def test_a_config_dumped_and_loaded_again_keeps_the_new_name(tmp_path):
    cfg = load_config(TINY_CONFIG, [OLD, "False"])
    path = tmp_path / "dumped.yaml"
    path.write_text(cfg.dump())
    assert "DETACH_INPUT" not in path.read_text().replace("DETACH_CONTEXT_BRANCH_INPUT", "")
    assert _value(load_config(str(path))) is False


# ---------------------------------------------------------------------- renamed nodes and files
def test_old_schedule_nodes_move_with_every_key_under_them(tmp_path):
    """SOLVER.PHASES -> SOLVER.CAGNET_SCHEDULE and SOLVER.STAGES -> SOLVER.ZS3NET_STAGES, nested
    keys (PHASES.MIXED.*) included, from a file and from overrides."""
    assert RENAMED_KEYS["SOLVER.PHASES"] == "SOLVER.CAGNET_SCHEDULE"
    assert RENAMED_KEYS["SOLVER.STAGES"] == "SOLVER.ZS3NET_STAGES"
    path = tmp_path / "old_nodes.yaml"
    path.write_text(f"_BASE_: {TINY_CONFIG}\nSOLVER:\n  PHASES:\n    TRAINING_BLOCK: 7\n    MIXED:\n"
                    "      ENABLED: True\n      BASE_LR: 0.125\n  STAGES:\n    GENERATOR_ITERS: 3\n")
    with LogRecords() as logs:
        cfg = load_config(str(path), ["SOLVER.PHASES.FINETUNING_BLOCK", "9", "SOLVER.STAGES.CLASSIFIER_LR", "0.5"])
    schedule = cfg.SOLVER.CAGNET_SCHEDULE
    assert (schedule.TRAINING_BLOCK, schedule.FINETUNING_BLOCK, schedule.MIXED.ENABLED, schedule.MIXED.BASE_LR) == (
        7, 9, True, 0.125)
    assert schedule.MIXED.GAMMA == 0.1  # keys the file does not give keep their defaults
    assert (cfg.SOLVER.ZS3NET_STAGES.GENERATOR_ITERS, cfg.SOLVER.ZS3NET_STAGES.CLASSIFIER_LR) == (3, 0.5)
    assert "PHASES" not in cfg.SOLVER and "STAGES" not in cfg.SOLVER
    assert f"{path}: SOLVER.PHASES is renamed SOLVER.CAGNET_SCHEDULE" in logs.text()
    assert "overrides: SOLVER.STAGES.CLASSIFIER_LR is renamed SOLVER.ZS3NET_STAGES.CLASSIFIER_LR" in logs.text()
    both = tmp_path / "both_nodes.yaml"
    both.write_text(f"_BASE_: {TINY_CONFIG}\nSOLVER:\n  PHASES:\n    TRAINING_BLOCK: 7\n"
                    "  CAGNET_SCHEDULE:\n    TRAINING_BLOCK: 8\n")
    with pytest.raises(ConfigValueError, match="both SOLVER.PHASES.TRAINING_BLOCK .the old name. and "
                                               "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK are given"):
        load_config(str(both))
    # The old node's other keys and the new node's other keys do not collide.
    apart = tmp_path / "apart.yaml"
    apart.write_text(f"_BASE_: {TINY_CONFIG}\nSOLVER:\n  PHASES:\n    TRAINING_BLOCK: 7\n"
                     "  CAGNET_SCHEDULE:\n    FINETUNING_BLOCK: 8\n")
    cfg = load_config(str(apart))
    assert (cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK, cfg.SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK) == (7, 8)


def test_an_old_config_file_name_reads_the_renamed_file_with_a_warning(tmp_path):
    folder = os.path.join(REPO, "configs", "synthetic_scenes")
    old, new = (os.path.join(folder, f"{p}_tiny_synthetic_scenes.yaml") for p in ("zs3net_st", "zs3net-st"))
    assert RENAMED_CONFIG_PREFIXES["zs3net_st_"] == "zs3net-st_" and not os.path.exists(old)
    with LogRecords() as logs:
        cfg = load_config(old)
    assert f"{old} is renamed {new}" in logs.text()
    assert cfg.dump() == load_config(new).dump()
    # as a _BASE_, and through train_net (whose default_setup then reads the new file)
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {os.path.join(folder, 'cagnet_st_tiny_synthetic_scenes.yaml')}\nSEED: 4\n")
    assert load_config(str(child)).MODEL.SELF_TRAINING.ENABLED
    args = argparse.Namespace(config_file=old, opts=[])
    assert load_tool("train_net").load_cfg(args).MODEL.META_ARCHITECTURE == "ZS3Net" and args.config_file == new
    # A name that is neither a file nor renamed still fails on the name given.
    with pytest.raises(AssertionError, match="zs3net_sx_tiny"):
        load_config(os.path.join(folder, "zs3net_sx_tiny_synthetic_scenes.yaml"))
