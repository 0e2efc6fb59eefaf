# Copyright (c) CaGNet-D2 contributors.
"""The paper configs: they build the full model and run one training and one finetuning step on
a synthetic batch (input shrunk to 64 px), and fail at once when their data is not prepared."""
import glob
import os
import subprocess
import sys

import pytest
import torch

from detectron2.utils.events import EventStorage

from cagnet.data.random_batch import random_training_batch
from cagnet.engine import FINETUNING, TRAINING, AlternatingStepTrainer, CaGNetTrainer

from conftest import REPO, load_cpu_config as _load

PAPER_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*", "cagnet_R101_*.yaml")))


def test_there_are_paper_configs():
    assert len(PAPER_CONFIGS) >= 5


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=os.path.basename)
def test_paper_config_trains_and_finetunes_one_step(path):
    cfg = _load(path)
    # The paper's setting, as the config spells it.
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.ASPP_L.OUT_CHANNELS == 600
    assert list(cfg.MODEL.ASPP_L.DILATIONS) == [6, 12, 18, 24]
    assert (cfg.MODEL.CAGNET.REC_WEIGHT, cfg.MODEL.CAGNET.KL_WEIGHT) == (10.0, 100.0)
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and tuple(cfg.INPUT.CROP.SIZE) == (368, 368)
    assert cfg.SOLVER.BASE_LR == 2.5e-4 and cfg.MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION == 0.5
    assert (cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK, cfg.SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK) == (100, 100)
    cfg.SOLVER.IMS_PER_BATCH = 1
    torch.manual_seed(0)
    model = CaGNetTrainer.build_model(cfg)
    batch = random_training_batch(1, 64, 64, model.seen_ids.tolist())
    model.finetune_pixels = 64
    step = AlternatingStepTrainer.from_config(
        cfg, model, CaGNetTrainer.build_optimizers(cfg, model), lambda seed, start: iter(lambda: batch, None)
    )
    phases = step.phases
    for phase in (TRAINING, FINETUNING):
        step.iter = next(i for i in range(10**6) if phases.phase(i) == phase)
        before = model.heads.classifier.weight.detach().clone()
        with EventStorage(step.iter) as storage:
            step.storage = storage
            step.run_step()  # raises FloatingPointError on a non-finite loss
            assert storage.history("total_loss").latest() >= 0
        assert not torch.equal(before, model.heads.classifier.weight)


def test_paper_config_without_data_fails_at_once(tmp_path):
    config = os.path.join(REPO, "configs", "pascal_voc", "cagnet_R101_os8_bs8_crop368_46k_voc20.yaml")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nothing_here"))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
         "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "DatasetNotPreparedError" in err
    assert str(tmp_path / "nothing_here") in err  # the missing path
    assert "prepare_pascal_voc.py" in err  # and how to prepare it
    assert "Model:" not in proc.stdout + err  # before the model is built
