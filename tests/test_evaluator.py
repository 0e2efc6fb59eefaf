# Copyright (c) CaGNet-D2 contributors.
"""Zero-shot metrics against hand-built confusion matrices and against detectron2's evaluator."""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.evaluation import SemSegEvaluator

from cagnet.data import ZeroShotClassSet, register_zero_shot_sem_seg
from cagnet.data.register import write_prepared_marker
from cagnet.evaluation import ZeroShotSemSegEvaluator, zero_shot_metrics
from cagnet.evaluation.zero_shot_evaluator import load_label_map


def _cm(rows):
    """Confusion matrix from a list of (pred, gt, count); K = 3 classes + ignore index 3."""
    cm = np.zeros((4, 4), dtype=np.int64)
    for p, g, n in rows:
        cm[p, g] += n
    return cm


def test_hand_built_confusion_matrix():
    # class 0 (seen): 8 correct, 2 predicted as 2; class 1 (seen): 5 correct;
    # class 2 (unseen): 3 correct, 1 predicted as 0. Ignored pixels (row/col 3) count nowhere.
    cm = _cm([(0, 0, 8), (2, 0, 2), (1, 1, 5), (2, 2, 3), (0, 2, 1), (1, 3, 50), (3, 3, 9)])
    r = zero_shot_metrics(cm, seen_ids=[0, 1], unseen_ids=[2], class_names=["a", "b", "c"])
    iou = {"a": 8 / (10 + 9 - 8), "b": 5 / 5, "c": 3 / (4 + 5 - 3)}
    assert r["IoU-a"] == pytest.approx(100 * iou["a"])
    assert r["IoU-b"] == pytest.approx(100.0)
    assert r["IoU-c"] == pytest.approx(100 * iou["c"])
    assert r["mIoU"] == pytest.approx(100 * np.mean(list(iou.values())))
    s, u = 100 * (iou["a"] + iou["b"]) / 2, 100 * iou["c"]
    assert r["mIoU-seen"] == pytest.approx(s)
    assert r["mIoU-unseen"] == pytest.approx(u)
    assert r["hIoU"] == pytest.approx(2 * s * u / (s + u))
    assert r["pACC"] == pytest.approx(100 * 16 / 19)
    assert r["pACC-seen"] == pytest.approx(100 * 13 / 15)
    assert r["pACC-unseen"] == pytest.approx(100 * 3 / 4)
    assert r["mACC"] == pytest.approx(100 * (0.8 + 1.0 + 0.75) / 3)
    assert r["mACC-seen"] == pytest.approx(100 * 0.9)
    assert r["mACC-unseen"] == pytest.approx(75.0)
    assert r["ACC-a"] == pytest.approx(80.0)


def test_class_absent_from_ground_truth_is_excluded_not_zero():
    # Class 1 never occurs in the ground truth but is predicted 4 times.
    cm = _cm([(0, 0, 6), (1, 0, 4), (2, 2, 5)])
    r = zero_shot_metrics(cm, seen_ids=[0, 1], unseen_ids=[2], class_names=["a", "b", "c"])
    assert math.isnan(r["IoU-b"]) and math.isnan(r["ACC-b"])
    assert r["mIoU-seen"] == pytest.approx(60.0)  # only class a counts: 6 / 10
    assert r["mIoU"] == pytest.approx((60.0 + 100.0) / 2)
    assert r["mACC-seen"] == pytest.approx(60.0)


def test_no_unseen_pixels_gives_hiou_zero():
    cm = _cm([(0, 0, 6), (1, 1, 4), (2, 0, 1)])  # unseen class 2 is predicted but never true
    r = zero_shot_metrics(cm, seen_ids=[0, 1], unseen_ids=[2])
    assert math.isnan(r["mIoU-unseen"]) and math.isnan(r["pACC-unseen"])
    assert r["hIoU"] == 0.0
    # Unseen present but never right: unseen mIoU 0 and hIoU 0.
    r = zero_shot_metrics(_cm([(0, 0, 6), (0, 2, 3)]), seen_ids=[0, 1], unseen_ids=[2])
    assert r["mIoU-unseen"] == 0.0 and r["hIoU"] == 0.0


@pytest.fixture
def eval_dataset(tmp_path):
    """Three 6x5 label maps on disk (classes 0..3, 255 ignore), registered as a zero-shot set."""
    rng = np.random.default_rng(0)
    root = tmp_path / "evalset"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    gts = []
    for i in range(3):
        gt = rng.integers(0, 4, size=(6, 5)).astype(np.uint8)
        gt[0, :2] = 255
        if i == 0:
            gt[gt == 3] = 1  # class 3 occurs only in later images
        Image.fromarray(gt).save(root / "labels" / f"{i}.png")
        Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(root / "images" / f"{i}.jpg")
        gts.append(gt)
    (root / "val.txt").write_text("0\n1\n2\n")
    write_prepared_marker(str(root), {"test": True})
    name = f"evalset_{tmp_path.name}"
    register_zero_shot_sem_seg(
        name,
        class_set=ZeroShotClassSet("evalset", ("cat", "dog", "cow", "sky"), ("cow", "dog")),
        image_root=str(root / "images"),
        label_root=str(root / "labels"),
        split_file=str(root / "val.txt"),
        marker_dir=str(root),
        prepare_command="(test)",
        embeddings_file="",
    )
    return name, root, gts


def test_evaluator_agrees_with_detectron2_and_writes_json(eval_dataset, tmp_path):
    name, root, gts = eval_dataset
    rng = np.random.default_rng(1)
    inputs = [{"file_name": str(root / "images" / f"{i}.jpg")} for i in range(3)]
    outputs = [{"sem_seg": torch.from_numpy(rng.normal(size=(4, 6, 5)).astype(np.float32))} for _ in range(3)]
    ours = ZeroShotSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    theirs = SemSegEvaluator(name, distributed=False, sem_seg_loading_fn=load_label_map)
    for ev in (ours, theirs):
        ev.reset()
        for i, o in zip(inputs, outputs):
            ev.process([i], [o])
    r, d2 = ours.evaluate()["sem_seg"], theirs.evaluate()["sem_seg"]
    for key in ("mIoU", "pACC", "mACC"):
        assert r[key] == pytest.approx(d2[key], abs=1e-9), key
    for c in ("cat", "dog", "cow", "sky"):
        assert r[f"IoU-{c}"] == pytest.approx(d2[f"IoU-{c}"], abs=1e-9)
    # Seen / unseen by contiguous index from the metadata: seen = cat(0), sky(3); unseen = dog(1), cow(2).
    assert r["mIoU-seen"] == pytest.approx((r["IoU-cat"] + r["IoU-sky"]) / 2)
    assert r["mIoU-unseen"] == pytest.approx((r["IoU-dog"] + r["IoU-cow"]) / 2)
    saved = json.loads((tmp_path / "out" / "zs_sem_seg_results.json").read_text())
    assert saved["hIoU"] == pytest.approx(r["hIoU"])
    assert set(saved) >= {"mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC", "pACC-seen", "pACC-unseen",
                          "mACC", "mACC-seen", "mACC-unseen", "IoU-cat"}


def test_evaluator_perfect_prediction(eval_dataset):
    name, root, gts = eval_dataset
    ev = ZeroShotSemSegEvaluator(name, distributed=False)
    ev.reset()
    for i, gt in enumerate(gts):
        logits = torch.nn.functional.one_hot(torch.from_numpy(np.where(gt == 255, 0, gt)).long(), 4)
        ev.process([{"file_name": str(root / "images" / f"{i}.jpg")}], [{"sem_seg": logits.permute(2, 0, 1).float()}])
    r = ev.evaluate()["sem_seg"]
    for key in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC", "mACC-unseen"):
        assert r[key] == pytest.approx(100.0), key
