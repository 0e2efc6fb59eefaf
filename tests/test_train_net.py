# Copyright (c) CaGNet-D2 contributors.
"""tools/train_net.py end to end on the miniature built-in dataset: train, --eval-only, 2 workers."""
import json
import os

import pytest

from conftest import TINY_CONFIG, run_tool

SMALL = [
    "DATASETS.TRAIN", '("synthetic_scenes_mini_train",)',
    "DATASETS.TEST", '("synthetic_scenes_mini_val",)',
    "SOLVER.IMS_PER_BATCH", 2,
    "SOLVER.MAX_ITER", 6,
    "SOLVER.PHASES.TRAINING_ONLY_ITERS", 2,
    "SOLVER.PHASES.TRAINING_BLOCK", 2,
    "SOLVER.PHASES.FINETUNING_BLOCK", 2,
    "DATALOADER.NUM_WORKERS", 0,
]
RESULTS = os.path.join("inference", "synthetic_scenes_mini_val", "zs_sem_seg_results.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    log = run_tool("train_net.py", "--config-file", TINY_CONFIG, *SMALL, "OUTPUT_DIR", out)
    return out, log


def test_train_writes_model_table_and_results(trained):
    out, log = trained
    assert (out / "model_final.pth").is_file()
    assert "Zero-shot results on synthetic_scenes_mini_val" in log
    for row in ("overall", "seen", "unseen", "hIoU"):
        assert row in log
    res = json.loads((out / RESULTS).read_text())
    assert 0 <= res["mIoU-seen"] <= 100 and res["hIoU"] >= 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard


def test_eval_only_reproduces_end_of_training_numbers(trained, tmp_path):
    out, _ = trained
    run_tool("train_net.py", "--config-file", TINY_CONFIG, "--eval-only", *SMALL,
             "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", tmp_path)
    assert json.loads((tmp_path / RESULTS).read_text()) == json.loads((out / RESULTS).read_text())


def test_two_cpu_workers_train_and_evaluate(tmp_path):
    log = run_tool("train_net.py", "--num-gpus", 2, "--config-file", TINY_CONFIG, *SMALL,
                   "SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", tmp_path)
    assert "Zero-shot results on synthetic_scenes_mini_val" in log
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "log.txt.rank1").is_file()  # the second worker ran
    assert "on 2 devices" in log  # and the evaluation was distributed
    assert (tmp_path / RESULTS).is_file()
