# Copyright (c) CaGNet-D2 contributors.
"""cagnet.analysis: the logic of tools/analysis/measure_coco_scale.py (the stand-in COCO tree, the
memory of a process tree, the registration and scoring steps) and of dev/check_paper_config.py
(the stand-in pretrained trunk, the check's overrides and its assertions)."""
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cagnet.analysis import coco_scale
from cagnet.analysis.paper_config_check import (
    SOURCE_CLASSES, check_overrides, source_batch, stability_checks, stand_in_pretrained_trunk,
)
from cagnet.data.datasets.register_coco_stuff import coco_stuff_paths, register_coco_stuff
from cagnet.utils.cli import load_config

from conftest import REPO, TINY_CONFIG

COCO_CONFIG = os.path.join(REPO, "configs", "coco_stuff", "cagnet_R101_os8_bs8_crop368_46k_cocostuff171.yaml")
PAPER_CONFIG = os.path.join(REPO, "configs", "pascal_voc", "cagnet_R101_os8_bs8_crop368_46k_voc20.yaml")
PREFIX = "test_coco_scale_"


# ---------------------------------------------------------------------- measure_coco_scale
@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A stand-in tree of 5 + 3 names over 2 distinct 48x64 pairs, registered as test_coco_scale_*."""
    root = str(tmp_path_factory.mktemp("coco_scale"))
    logs = []
    assert coco_scale.build_stand_in(root, distinct=2, num_train=5, num_val=3, size=(48, 64), log=logs.append)
    register_coco_stuff(root, prefix=PREFIX)
    return root, logs


def test_stand_in_tree_links_every_name_to_the_distinct_pairs(stand_in):
    root, logs = stand_in
    paths = coco_stuff_paths(root)
    for split, n, first in (("train", 5, "000000000000"), ("val", 3, "001000000000")):
        with open(paths["split_files"][split]) as f:
            stems = f.read().split()
        assert len(stems) == n and stems[0] == first
        for i, stem in enumerate(stems):
            image = os.path.join(paths["images"][split], stem + ".jpg")
            label = os.path.join(paths["labels"][split], stem + ".png")
            assert os.path.samefile(image, os.path.join(root, "stand_in_sources", f"{i % 2}.jpg"))
            assert os.path.samefile(label, os.path.join(root, "stand_in_sources", f"{i % 2}.png"))
    # hard links: 5 train + 3 val names (+ the source) share 2 files
    assert os.stat(os.path.join(root, "stand_in_sources", "0.jpg")).st_nlink == 1 + 3 + 2
    label = np.asarray(Image.open(os.path.join(root, "stand_in_sources", "0.png")))
    image = np.asarray(Image.open(os.path.join(root, "stand_in_sources", "0.jpg")))
    assert label.shape == (48, 64) and image.shape == (48, 64, 3)
    assert (label[:, : int(0.03 * 64)] == 255).all() and label[:, int(0.03 * 64):].max() <= 170
    assert "2 pairs" in logs[-1]
    # an identical tree is reused, another one is built
    assert not coco_scale.build_stand_in(root, distinct=2, num_train=5, num_val=3, size=(48, 64), log=logs.append)
    assert logs[-1].endswith("(exists)")


def test_registration_step_counts_the_records(stand_in):
    out = coco_scale.step_register((PREFIX + "coco_stuff_171_train", PREFIX + "coco_stuff_171_val"))
    assert out["records"] == {PREFIX + "coco_stuff_171_train": 5, PREFIX + "coco_stuff_171_val": 3}
    assert out["get_s"] >= 0 and math.isfinite(out["records_mb"])


def test_score_step_counts_every_labelled_pixel(stand_in):
    root, _ = stand_in
    out = coco_scale.step_score(COCO_CONFIG, 2, dataset=PREFIX + "coco_stuff_171_val")
    labels = [np.asarray(Image.open(os.path.join(root, "stand_in_sources", f"{i}.png"))) for i in range(2)]
    assert out["images"] == 2
    assert out["labelled_pixels"] == sum(int((lab != 255).sum()) for lab in labels)
    assert out["histogram_bytes"] > 0 and out["seconds"] > 0


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_memory_of_a_process_tree_and_a_measured_command():
    assert coco_scale.tree_pss_mb(os.getpid()) > 10  # this interpreter with torch loaded
    code = "import time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1); print('done')"
    wall, peak, out = coco_scale.run_measured([sys.executable, "-c", code], dict(os.environ), interval=0.05)
    assert out.strip() == "done" and wall >= 1 and peak > 150  # the 200 MB it touched
    with pytest.raises(SystemExit, match=r"failed \(3\).*boom"):
        coco_scale.run_measured([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ))


# ---------------------------------------------------------------------- check_paper_config
def test_source_batch_is_deterministic_and_in_range():
    a = source_batch(3, 32, np.random.default_rng(7))
    b = source_batch(3, 32, np.random.default_rng(7))
    assert a[0].shape == (3, 3, 32, 32) and a[1].shape == (3, 32, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert 0 <= a[0].min() and a[0].max() <= 255
    assert 0 <= a[1].min() and a[1].max() < SOURCE_CLASSES and len(a[1].unique()) >= 2


def test_check_overrides_are_valid_keys_and_weights_come_last():
    opts = check_overrides(device="cpu", crop=64, batch=2, iters=200, finetune_iters=60, output_dir="/tmp/x",
                           weights="stand_in.pth", opts=["MODEL.WEIGHTS", "ignored.pkl", "SOLVER.BASE_LR", 0.01])
    cfg = load_config(PAPER_CONFIG, opts)  # validates every key
    assert tuple(cfg.INPUT.CROP.SIZE) == (64, 64) and cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.SOLVER.MAX_ITER == 200
    assert cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS == 140 and cfg.SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK == 20
    assert cfg.DATASETS.TRAIN == ("synthetic_scenes_train",) and cfg.DATASETS.TEST == ()
    assert cfg.MODEL.WEIGHTS == "stand_in.pth" and cfg.SOLVER.BASE_LR == 0.01
    assert cfg.MODEL.RESNETS.DEPTH == 101  # the model is the config's


def _healthy(steps=30):
    ce = list(np.linspace(3.0, 1.0, steps))
    return {"loss_cls": ce, "loss_kl": [100 * 0.1] * steps, "loss_rec": [1.0] * steps}, [(1.0, 0.5)] * steps


def test_stability_checks_pass_a_healthy_run():
    losses, features = _healthy()
    checks = stability_checks(losses, features, kl_weight=100)
    assert all(ok for ok, _ in checks) and len(checks) == 5, checks


@pytest.mark.parametrize("broken, failing", [
    (lambda l, f: l["loss_rec"].__setitem__(5, float("nan")), "every loss finite"),
    (lambda l, f: l.__setitem__("loss_cls", [2.0] * 30), "CE falls"),
    (lambda l, f: l.__setitem__("loss_cls", [3.0, 1.0]), "CE falls: only 2 training steps"),
    (lambda l, f: f.__setitem__(-1, (5.0, 0.5)), "X mean |x|"),
    (lambda l, f: f.__setitem__(-1, (1.0, 0.1)), "X per-channel std of x"),
    (lambda l, f: l.__setitem__("loss_kl", [100 * 0.9] * 30), "KL of the latent code"),
])
def test_stability_checks_name_what_failed(broken, failing):
    losses, features = _healthy()
    broken(losses, features)
    checks = stability_checks(losses, features, kl_weight=100)
    failed = [text for ok, text in checks if not ok]
    assert len(failed) == 1 and failed[0].startswith(failing), checks


def test_a_stopped_run_fails_the_check():
    losses, features = _healthy()
    checks = stability_checks(losses, features, kl_weight=100, failure="non-finite loss: loss_cls")
    assert [text for ok, text in checks if not ok] == ["non-finite loss: loss_cls", "every loss finite"]


def test_stand_in_trunk_is_a_checkpoint_of_the_trunk_and_is_cached(tmp_path):
    path, logs = str(tmp_path / "trunk.pth"), []
    opts = ["MODEL.ASPP_L.OUT_CHANNELS", 16]
    assert stand_in_pretrained_trunk(TINY_CONFIG, path, opts=opts, tiny=True, log=logs.append) == path
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["model"] and all(k.startswith("backbone.resnet.") for k in saved["model"])
    assert all(torch.isfinite(v.float()).all() for v in saved["model"].values())
    stand_in_pretrained_trunk(TINY_CONFIG, path, opts=opts, tiny=True, log=logs.append)
    assert logs[-1].endswith("(cached)")
