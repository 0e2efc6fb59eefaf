# Copyright (c) CaGNet-D2 contributors.
"""Test-time augmentation (SemanticSegmentorWithTTA, TEST.AUG.*) against plain inference and a
by-hand mean, the calibration constant under TTA, and predictions written by --eval-only
(TEST.SAVE_PREDICTIONS) that rescore to the printed metrics."""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from cagnet.evaluation import format_zero_shot_table, rescore_predictions
from cagnet.modeling import SemanticSegmentorWithTTA

from _tool_helpers import LogRecords, lively_model, load_tool, save_lively_checkpoint, tiny_config_file, single_thread  # noqa: F401
from conftest import run_tool, tiny_cfg


def _tta_cfg(min_sizes, flip, max_size=1000):
    return tiny_cfg(None, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", tuple(min_sizes), "TEST.AUG.MAX_SIZE",
                    max_size, "TEST.AUG.FLIP", flip)


def _image(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _symmetric_image(h=48, w=64, seed=1):
    half = _image(h, w // 2, seed)
    return torch.cat([half, half.flip(dims=[2])], dim=2)


@torch.no_grad()
def _plain(model, image):
    return model([{"image": image}])[0]["sem_seg"]


@pytest.fixture(scope="module")
def model():
    return lively_model()


def test_one_scale_without_flip_equals_plain_inference_exactly(model):
    image = _image()
    tta = SemanticSegmentorWithTTA(_tta_cfg([48], False), model)
    out = tta([{"image": image}])[0]["sem_seg"]
    assert out.shape == (model.num_classes, 48, 64)
    assert torch.equal(out, _plain(model, image))


def test_flip_on_a_symmetric_image_averages_the_mirrored_output(model):
    """The flipped pass sees the same image; its output is mirrored back before the mean. A CNN's
    output on a symmetric image is not symmetric (its kernels are not), so this is what flip TTA
    must give, exactly."""
    image = _symmetric_image()
    assert torch.equal(image, image.flip(dims=[2]))
    plain = _plain(model, image)
    out = SemanticSegmentorWithTTA(_tta_cfg([48], True), model)([{"image": image}])[0]["sem_seg"]
    assert torch.equal(out, (plain + plain.flip(dims=[2])) / 2)
    assert not torch.equal(out, plain)  # the model is not flip-equivariant


class PixelwiseModel(nn.Module):
    """A flip-equivariant segmentor (1x1 convolution): a symmetric image gives a symmetric output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, batched_inputs):
        out = []
        for x in batched_inputs:
            logits = self.conv(x["image"].float()[None] / 255.0)
            size = (x.get("height", logits.shape[2]), x.get("width", logits.shape[3]))
            out.append({"sem_seg": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]})
        return out


def test_flip_tta_equals_plain_inference_for_a_flip_equivariant_model():
    model = PixelwiseModel().eval()
    tta = SemanticSegmentorWithTTA(_tta_cfg([48], True), model)
    for image in (_symmetric_image(), _image()):  # also on an asymmetric image: flips are undone
        with torch.no_grad():
            assert torch.equal(tta([{"image": image}])[0]["sem_seg"], _plain(model, image))


def test_multi_scale_flip_tta_is_the_mean_over_resized_and_flipped_inputs(model):
    image = _image()
    sizes = [32, 48, 72]
    out = SemanticSegmentorWithTTA(_tta_cfg(sizes, True), model)([{"image": image}])[0]["sem_seg"]
    np_image = image.permute(1, 2, 0).numpy()
    passes = []
    with torch.no_grad():
        for s in sizes:
            resized = T.ResizeShortestEdge(s, 1000).get_transform(np_image).apply_image(np_image)
            for flip in (False, True):
                x = np.ascontiguousarray(resized[:, ::-1] if flip else resized)
                logits = model([{"image": torch.from_numpy(x.transpose(2, 0, 1).copy()), "height": 48,
                                 "width": 64}])[0]["sem_seg"]
                passes.append(logits.flip(dims=[2]) if flip else logits)
    assert len(passes) == 6 and passes[0].shape == (model.num_classes, 48, 64)
    torch.testing.assert_close(out, torch.stack(passes).mean(dim=0), rtol=0, atol=1e-5)
    assert not torch.allclose(out, _plain(model, image), atol=1e-3)


def test_calibration_constant_acts_on_tta_output_as_on_one_pass(tiny_scenes):
    """SPNet-c subtracts gamma from the seen logits inside inference; TTA averages logits, so the
    TTA output with gamma is the TTA output without it, minus gamma on the seen classes."""
    torch.manual_seed(0)
    spnet = build_model(tiny_cfg(None, "MODEL.META_ARCHITECTURE", "SPNet")).eval()
    tta = SemanticSegmentorWithTTA(_tta_cfg([32, 48], True), spnet)
    image = _image()
    with torch.no_grad():
        spnet.set_calibration(0.0)
        base = tta([{"image": image}])[0]["sem_seg"]
        spnet.set_calibration(0.7)
        shifted = tta([{"image": image}])[0]["sem_seg"]
    seen, unseen = spnet.seen_ids, spnet.unseen_ids
    torch.testing.assert_close(shifted[seen], base[seen] - 0.7, rtol=0, atol=1e-5)
    torch.testing.assert_close(shifted[unseen], base[unseen], rtol=0, atol=0)
    # The wrapper exposes the model's buffer (collect_score_statistics zeroes it in place) ...
    assert tta.calibration is spnet.calibration
    # ... CaGNet's too (calibrated CaGNet, MODEL.CALIBRATION).
    cagnet = lively_model()
    assert SemanticSegmentorWithTTA(_tta_cfg([48], False), cagnet).calibration is cagnet.calibration


def test_demo_with_one_scale_tta_draws_what_plain_inference_draws(tiny_scenes, tmp_path):
    weights = tmp_path / "model.pth"
    save_lively_checkpoint(weights)
    config = tiny_config_file(tmp_path)
    image = DatasetCatalog.get("synthetic_scenes_mini_val")[0]["file_name"]
    demo = load_tool("demo")
    legends = []
    for name, opts in (("plain", []), ("tta", ["TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", "(48,)",
                                              "TEST.AUG.FLIP", False])):
        out = tmp_path / name
        with LogRecords("cagnet.demo") as log:
            assert demo.main(["--config-file", config, "--input", image, "--output", str(out),
                              "MODEL.WEIGHTS", str(weights), *map(str, opts)]) == 0
        stem = os.path.splitext(os.path.basename(image))[0]
        legends.append(json.loads((out / f"{stem}.json").read_text())["legend"])
        assert np.asarray(Image.open(out / f"{stem}.png")).size > 0
        assert ("Test-time augmentation" in log.text()) == (name == "tta")
    assert legends[0] == legends[1]


# ------------------------------------------------------------------ predictions on disk
def _nan_to_none(res):
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_eval_only_writes_predictions_that_rescore_to_the_printed_metrics(tiny_scenes, tmp_path):
    from pycocotools import mask as mask_util

    weights = tmp_path / "model.pth"
    save_lively_checkpoint(weights)
    config = tiny_config_file(tmp_path)
    out = tmp_path / "eval"
    log = run_tool("train_net.py", "--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights,
                   "OUTPUT_DIR", out, "TEST.SAVE_PREDICTIONS", True, "TEST.AUG.ENABLED", True,
                   "TEST.AUG.MIN_SIZES", "(48,)", "TEST.AUG.FLIP", False)
    records = DatasetCatalog.get("synthetic_scenes_mini_val")
    results = {}
    for folder in ("inference", "inference_TTA"):
        d = out / folder / "synthetic_scenes_mini_val"
        printed = json.loads((d / "zs_sem_seg_results.json").read_text())
        rescored = rescore_predictions("synthetic_scenes_mini_val", str(d / "predictions"))
        assert _nan_to_none(rescored) == printed  # exactly
        assert format_zero_shot_table(rescored) in log
        pngs = {r["image_id"]: np.asarray(Image.open(d / "predictions" / f"{r['image_id']}.png")) for r in records}
        assert all(p.dtype == np.uint8 and p.shape == (48, 48) for p in pngs.values())
        # detectron2's sem_seg_predictions.json: one RLE per predicted class and image, the same maps.
        entries = json.loads((d / "sem_seg_predictions.json").read_text())
        by_file = {r["file_name"]: r["image_id"] for r in records}
        rebuilt = {i: np.full((48, 48), 255, np.uint8) for i in pngs}
        for e in entries:
            rebuilt[by_file[e["file_name"]]][mask_util.decode(e["segmentation"]) > 0] = e["category_id"]
        assert all(np.array_equal(rebuilt[i], pngs[i]) for i in pngs)
        results[folder] = (printed, pngs)
    # One scale and no flip: the TTA evaluation is the plain one, and it is printed as such.
    assert results["inference"][0] == results["inference_TTA"][0]
    assert all(np.array_equal(results["inference"][1][i], results["inference_TTA"][1][i]) for i in results["inference"][1])
    assert "Zero-shot results on synthetic_scenes_mini_val with test-time augmentation" in log
    assert len(set(np.concatenate([p.ravel() for p in results["inference"][1].values()]).tolist())) > 1
    # The tool prints the same table; a folder with a prediction missing is refused by name.
    rescore = load_tool("rescore_predictions")
    d = out / "inference" / "synthetic_scenes_mini_val"
    assert rescore.main(["--dataset", "synthetic_scenes_mini_val", "--predictions", str(d / "predictions"),
                         "--output", str(tmp_path / "rescored.json")]) == 0
    assert json.loads((tmp_path / "rescored.json").read_text()) == results["inference"][0]
    os.remove(d / "predictions" / f"{records[3]['image_id']}.png")
    with pytest.raises(FileNotFoundError, match=records[3]["image_id"]):
        rescore_predictions("synthetic_scenes_mini_val", str(d / "predictions"))
