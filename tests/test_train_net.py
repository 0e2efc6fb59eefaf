# Copyright (c) CaGNet-D2 contributors.
"""tools/train_net.py end to end on the miniature built-in dataset: train, --eval-only, 2 workers;
damaged images and labels are named, in the mapper (training), the evaluator and by train_net as
one line; a previous run's OUTPUT_DIR is refused."""
import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog

from cagnet.data import ZeroShotSemSegDatasetMapper
from cagnet.data.datasets.register_synthetic_scenes import MINI_GENERATION, register_synthetic_scenes
from cagnet.data.file_checks import ImageReadError, InvalidLabelError
from cagnet.evaluation import ZeroShotSemSegEvaluator

from _tool_helpers import load_tool
from conftest import TINY_CONFIG, run_tool, tiny_cfg

SMALL = [
    "DATASETS.TRAIN", '("synthetic_scenes_mini_train",)',
    "DATASETS.TEST", '("synthetic_scenes_mini_val",)',
    "SOLVER.IMS_PER_BATCH", 2,
    "SOLVER.MAX_ITER", 6,
    "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 2,
    "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", 2,
    "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", 2,
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_workers_train_and_evaluate(tmp_path):
    # A port of its own: detectron2's default depends only on the user id, which concurrent runs share.
    log = run_tool("train_net.py", "--num-gpus", 2, "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
                   "--config-file", TINY_CONFIG, *SMALL,
                   "SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", tmp_path)
    assert "Zero-shot results on synthetic_scenes_mini_val" in log
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "log.txt.rank1").is_file()  # the second worker ran
    assert "on 2 devices" in log  # and the evaluation was distributed
    assert (tmp_path / RESULTS).is_file()


def test_refuses_the_output_dir_of_a_previous_run(trained, capsys):
    out, _ = trained
    before = {n: (out / n).read_bytes() for n in ("model_final.pth", "config.yaml", "last_checkpoint")}
    with pytest.raises(SystemExit) as e:  # in this process: the check comes before any worker starts
        load_tool("train_net").cli(["--config-file", TINY_CONFIG, *map(str, SMALL), "OUTPUT_DIR", str(out)])
    log = capsys.readouterr().err
    assert e.value.code == 1 and f"error: OUTPUT_DIR {out} holds a previous run's checkpoints" in log
    assert "--resume" in log and "OVERWRITE_OUTPUT_DIR True" in log
    assert {n: (out / n).read_bytes() for n in before} == before  # config.yaml too


# ---------------------------------------------------------------------- damaged data
@pytest.fixture
def damaged_copy(tiny_scenes, tmp_path, monkeypatch):
    """A copy of the miniature dataset at $DETECTRON2_DATASETS/synthetic_scenes_mini (for the
    tools) that is also registered in this process as damaged_<n>_{train,val}."""
    DatasetCatalog.get("synthetic_scenes_mini_train")  # generated on first use
    root = tmp_path / "datasets" / "synthetic_scenes_mini"
    shutil.copytree(tiny_scenes, root)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    prefix = f"damaged_{tmp_path.name}"
    register_synthetic_scenes(str(root), prefix=prefix, generation=MINI_GENERATION)
    return root, prefix


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _mapper(prefix):
    cfg = tiny_cfg(None, "DATASETS.TRAIN", (f"{prefix}_train",))
    return ZeroShotSemSegDatasetMapper(cfg, is_train=True)


def test_mapper_names_a_truncated_image_and_a_label_value_out_of_range(damaged_copy):
    root, prefix = damaged_copy
    records = DatasetCatalog.get(f"{prefix}_train")
    mapper = _mapper(prefix)
    _truncate(records[0]["file_name"])
    with pytest.raises(ImageReadError, match=f"{records[0]['file_name']}: cannot decode this file as an image "
                                             "\\(OSError: image file is truncated"):
        mapper(records[0])
    label_file = records[1]["sem_seg_file_name"]
    label = np.array(Image.open(label_file))
    label[:2, :3] = 50  # the built-in data has 26 classes: 50 is neither a class nor ignore (255)
    Image.fromarray(label).save(label_file)
    with pytest.raises(InvalidLabelError) as e:
        mapper(records[1])
    assert f"{label_file}: label values 50 (6 px) are neither a class index nor the ignore label" in str(e.value)
    assert f"valid values in the label files of '{prefix}_train': 0..25, 255 (the 26 class indices 0..25 of its " \
           "metadata stuff_classes and the ignore label 255)" in str(e.value)


def test_evaluator_refuses_the_value_k_instead_of_counting_it_as_ignore(damaged_copy):
    root, prefix = damaged_copy
    record = DatasetCatalog.get(f"{prefix}_val")[0]
    label = np.array(Image.open(record["sem_seg_file_name"]))
    label[0, :4] = 26  # = the number of classes: the old evaluator counted it as ignore
    Image.fromarray(label).save(record["sem_seg_file_name"])
    ev = ZeroShotSemSegEvaluator(f"{prefix}_val", distributed=False)
    ev.reset()
    logits = torch.zeros(26, *label.shape)
    with pytest.raises(InvalidLabelError, match=f"{record['sem_seg_file_name']}: label values 26 \\(4 px\\)"):
        ev.process([{"file_name": record["file_name"]}], [{"sem_seg": logits}])
    _truncate(record["sem_seg_file_name"])
    with pytest.raises(ImageReadError, match=f"{record['sem_seg_file_name']}: cannot decode this label file"):
        ev.process([{"file_name": record["file_name"]}], [{"sem_seg": logits}])


def test_train_net_names_a_damaged_image_in_training_and_in_evaluation(damaged_copy, tmp_path):
    root, _ = damaged_copy
    for name in os.listdir(root / "images" / "train"):
        _truncate(root / "images" / "train" / name)
    log = run_tool("train_net.py", "--config-file", TINY_CONFIG, *SMALL, "OUTPUT_DIR", tmp_path / "train", returncode=1)
    assert f"error: {root / 'images' / 'train'}" in log and "cannot decode this file as an image" in log
    val = sorted(os.listdir(root / "images" / "val"))[3]
    _truncate(root / "images" / "val" / val)
    log = run_tool("train_net.py", "--config-file", TINY_CONFIG, "--eval-only", *SMALL, "MODEL.WEIGHTS", "",
                   "OUTPUT_DIR", tmp_path / "eval", returncode=1)
    assert f"error: {root / 'images' / 'val' / val}: cannot decode this file as an image" in log
    assert "MODEL.WEIGHTS is empty: this runs a RANDOMLY INITIALISED model" in log
