# Copyright (c) CaGNet-D2 contributors.
"""The R-101 configs of the baselines and of +ST on the real datasets: same recipe as the CaGNet
config they derive from, consistent stages, +ST continuing its base run; SPNet and ZS3Net build and
train one step per stage on a synthetic batch (input shrunk to 64 px)."""
import glob
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from cagnet.data.random_batch import random_training_batch
from cagnet.engine import StageSchedule, ZeroShotStagedTrainer, trainer_class
from cagnet.engine.staged_trainer import StagedStepTrainer

from conftest import REPO, load_cpu_config as _load

PREFIXES = ("spnet", "spnet-c", "zs3net", "zs3net-st", "cagnet-st")
CONFIGS = sorted(p for prefix in PREFIXES for p in glob.glob(os.path.join(REPO, "configs", "*", f"{prefix}_R101_*.yaml")))


def test_every_real_dataset_has_every_method():
    for dataset in ("pascal_voc", "pascal_context", "coco_stuff"):
        names = [os.path.basename(p) for p in CONFIGS if f"{os.sep}{dataset}{os.sep}" in p]
        assert sorted(n.split("_R101_")[0] for n in names) == sorted(PREFIXES), dataset


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_follows_its_cagnet_recipe(path):
    cfg = _load(path)
    base = _load(path.replace(os.path.basename(path).split("_R101_")[0] + "_R101_", "cagnet_R101_"))
    for key in ("MODEL.RESNETS.DEPTH", "MODEL.ASPP_L.OUT_CHANNELS", "MODEL.DILATED_RESNET.DILATIONS",
                "SOLVER.IMS_PER_BATCH", "INPUT.CROP.SIZE", "DATASETS.TRAIN", "DATASETS.TEST"):
        a, b = cfg, base
        for part in key.split("."):
            a, b = a[part], b[part]
        assert a == b, key
    assert cfg.OUTPUT_DIR != base.OUTPUT_DIR
    name = os.path.basename(path)
    if name.startswith(("zs3net-st", "cagnet-st")):
        assert cfg.MODEL.SELF_TRAINING.ENABLED
        parent = _load(os.path.join(os.path.dirname(path), name.replace("-st_R101_", "_R101_")))
        assert cfg.MODEL.WEIGHTS == os.path.join(parent.OUTPUT_DIR, "model_final.pth")
    if cfg.MODEL.META_ARCHITECTURE == "ZS3Net":
        stages = dict(StageSchedule.from_config(cfg, ("segmentation", "generator", "classifier")).stages)
        assert stages["generator"] > 0 and stages["classifier"] > 0
        assert (stages["segmentation"] == 0) == cfg.MODEL.SELF_TRAINING.ENABLED
    if name.startswith("spnet-c"):
        assert cfg.MODEL.CALIBRATION.METHOD == "held_out_classes"
    trainer_class(cfg)  # a trainer exists for it


@pytest.mark.parametrize("prefix", ["spnet", "zs3net"])
def test_r101_baselines_train_one_step_per_stage(prefix):
    cfg = _load(os.path.join(REPO, "configs", "pascal_voc", f"{prefix}_R101_os8_bs8_crop368_46k_voc20.yaml"))
    cfg.SOLVER.IMS_PER_BATCH = 1
    torch.manual_seed(0)
    model = build_model(cfg)
    schedule = StageSchedule.from_config(cfg, model.STAGES)
    optimizers = {n: ZeroShotStagedTrainer.build_stage_optimizer(cfg, model, n) for n, _ in schedule.stages}
    batch = random_training_batch(1, 64, 64, model.seen_ids.tolist())
    step = StagedStepTrainer(model, model, optimizers, schedule, 0, lambda seed, start: iter(lambda: batch, None))
    start = 0
    for name, n in schedule.stages:
        step.iter = start
        with EventStorage(start) as storage:
            step.storage = storage
            step.run_step()  # raises FloatingPointError on a non-finite loss
            assert storage.history("total_loss").latest() >= 0
        start += n
