# Copyright (c) CaGNet-D2 contributors.
"""tools/demo.py and tools/visualize_features.py on a tiny model, and the numbers behind them
(cagnet.visualization.feature_maps)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils

from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config
from cagnet.visualization.feature_maps import compute_feature_maps, context_scale_map, reconstruction_error, upsample_to_image
from cagnet.visualization.drawing import UNSEEN_MARK

from _tool_helpers import LogRecords, load_tool, save_lively_checkpoint, tiny_config_file, single_thread  # noqa: F401


@pytest.fixture(scope="module")
def setup(tiny_scenes, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_tools")
    weights = d / "model.pth"
    save_lively_checkpoint(weights)
    config = tiny_config_file(d)
    records = DatasetCatalog.get("synthetic_scenes_mini_val")
    return {"dir": d, "weights": str(weights), "config": config, "records": records}


def _image_tensor(cfg, path):
    image = utils.read_image(path, format=cfg.INPUT.FORMAT)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def test_demo_writes_overlays_with_legends_and_skips_unreadable(setup, tmp_path):
    images = [r["file_name"] for r in setup["records"][:2]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "vis"
    demo = load_tool("demo")
    with LogRecords() as log:
        rc = demo.main(["--config-file", setup["config"], "--input", images[0], str(bad), images[1],
                        "--output", str(out), "MODEL.WEIGHTS", setup["weights"]])
    assert rc == 0
    assert str(bad) in log.text() and "Skipping" in log.text()
    summary = json.loads((out / demo.SUMMARY_FILE).read_text())
    assert [s["input"] for s in summary["skipped"]] == [str(bad)]
    assert len(summary["written"]) == 2 and not (out / "broken.png").exists()

    cfg = load_config(setup["config"], ["MODEL.WEIGHTS", setup["weights"]])
    model = build_model_from_checkpoint(cfg, setup["weights"])
    unseen = set(model.unseen_ids.tolist())
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        png = np.asarray(Image.open(out / f"{stem}.png").convert("RGB")).astype(float)
        record = json.loads((out / f"{stem}.json").read_text())
        h, w = record["image_size"]
        assert (h, w) == (48, 48)
        # overlay scaled to ~480 px plus a legend panel on the right
        assert png.shape[0] == round(h * record["scale"]) == 480
        assert png.shape[1] > round(w * record["scale"])
        assert list(png.shape[:2]) == record["output_size"]
        assert png.std() > 20  # not blank
        # the legend lists exactly the classes the model predicts, with the model's names
        with torch.no_grad():
            pred = model([{"image": _image_tensor(cfg, path)}])[0]["sem_seg"].argmax(0)
        ids, counts = np.unique(pred.numpy(), return_counts=True)
        legend = record["legend"]
        assert len(ids) >= 2
        assert {e["name"] for e in legend} == {model.class_names[i] for i in ids}
        assert [e["class_id"] for e in legend] == [int(i) for i in ids[np.argsort(-counts, kind="stable")]]
        assert sum(e["fraction"] for e in legend) == pytest.approx(1.0)
        for e in legend:
            assert e["unseen"] == (e["class_id"] in unseen)
            assert e["label"] == e["name"] + (UNSEEN_MARK if e["unseen"] else "")
        # each class colour of the legend is visible in the overlay
        overlay = png[:, : png.shape[0]]
        for e in legend[:2]:
            dist = np.abs(overlay - np.array(e["color"], float)).sum(-1)
            assert dist.min() < 150, e  # blended with the image (alpha), so not exact


def test_demo_confidence_threshold_leaves_uncertain_pixels_undrawn(setup, tmp_path):
    path = setup["records"][2]["file_name"]
    cfg = load_config(setup["config"], ["MODEL.WEIGHTS", setup["weights"]])
    model = build_model_from_checkpoint(cfg, setup["weights"])
    with torch.no_grad():
        prob = model([{"image": _image_tensor(cfg, path)}])[0]["sem_seg"].softmax(0).max(0).values
    threshold = float(prob.median())
    rc = load_tool("demo").main(["--config-file", setup["config"], "--input", path, "--output", str(tmp_path),
                                 "--confidence", str(threshold), "MODEL.WEIGHTS", setup["weights"]])
    assert rc == 0
    stem = os.path.splitext(os.path.basename(path))[0]
    legend = json.loads((tmp_path / f"{stem}.json").read_text())["legend"]
    assert sum(e["fraction"] for e in legend) == pytest.approx((prob >= threshold).float().mean().item())


def test_demo_fails_when_no_image_is_readable(setup, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    rc = load_tool("demo").main(["--config-file", setup["config"], "--input", str(bad), "--output",
                                 str(tmp_path / "vis"), "MODEL.WEIGHTS", setup["weights"]])
    assert rc == 1


def test_visualize_features_draws_scale_map_and_error_maps(setup, tmp_path):
    rec = setup["records"][0]
    out = tmp_path / "features"
    rc = load_tool("visualize_features").main(
        ["--config-file", setup["config"], "--input", rec["file_name"], "--label", rec["sem_seg_file_name"],
         "--output", str(out), "MODEL.WEIGHTS", setup["weights"]]
    )
    assert rc == 0
    stem = os.path.splitext(os.path.basename(rec["file_name"]))[0]
    cfg = load_config(setup["config"], ["MODEL.WEIGHTS", setup["weights"]])
    model = build_model_from_checkpoint(cfg, setup["weights"])
    label = torch.as_tensor(np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64))
    maps = compute_feature_maps(model, _image_tensor(cfg, rec["file_name"]), label)

    for kind in ("scales", "reconstruction"):
        png = np.asarray(Image.open(out / f"{stem}_{kind}.png").convert("RGB")).astype(float)
        info = json.loads((out / f"{stem}_{kind}.json").read_text())
        assert list(png.shape[:2]) == info["output_size"] and min(png.shape[:2]) >= 300
        assert png.std() > 20
    scales = json.loads((out / f"{stem}_scales.json").read_text())["legend"]
    assert [e["dilation"] for e in scales] == [1, 2, 5]
    counts = np.bincount(maps.scale_map.numpy().ravel(), minlength=3)
    assert [e["fraction"] for e in scales] == pytest.approx((counts / counts.sum()).tolist())
    rec_info = json.loads((out / f"{stem}_reconstruction.json").read_text())
    assert rec_info["labels_from"] == "ground truth"
    assert rec_info["mean_error_mu"] == pytest.approx(float(np.nanmean(maps.error_mu.numpy())), rel=1e-5)
    assert rec_info["mean_error_random"] == pytest.approx(float(np.nanmean(maps.error_random.numpy())), rel=1e-5)
    assert rec_info["mean_error_mu"] != pytest.approx(rec_info["mean_error_random"])


def test_feature_map_numbers(setup):
    cfg = load_config(setup["config"], ["MODEL.WEIGHTS", setup["weights"]])
    model = build_model_from_checkpoint(cfg, setup["weights"])
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 44, 52, generator=g) * 255  # not a multiple of the stride
    label = torch.randint(0, model.num_classes, (44, 52), generator=g)
    label[:8] = 255
    maps = compute_feature_maps(model, image, label, seed=3)
    s = model.backbone.output_shape()["aspp"].stride
    fh, fw = -(-44 // s), -(-52 // s)  # cells covering the image; the padding is cropped
    assert maps.image_size == (44, 52) and maps.stride == s
    assert tuple(maps.scale_map.shape) == tuple(maps.error_mu.shape) == (fh, fw)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        ctx = model.contextual_module(model.backbone(images.tensor)["aspp"], sample=False)
    assert torch.equal(maps.scale_map, ctx.scale_weights[0].argmax(0)[:fh, :fw])
    assert torch.equal(context_scale_map(ctx.scale_weights)[0, :fh, :fw], maps.scale_map)
    # cells whose centre is labelled ignore (the first 8 rows) give NaN; elsewhere the squared
    # distance of one pixel
    ignored = torch.arange(fh) * s + s // 2 < 8
    assert torch.isnan(maps.error_mu[ignored]).all()
    inner = maps.error_mu[~ignored][:, : 52 // s]
    assert inner.numel() and torch.isfinite(inner).all()
    i, j = int(ignored.sum()) + 1, 2
    c = int(maps.labels[i, j])
    with torch.no_grad():
        fake = model.generator(ctx.mu[0, :, i, j][None], model.class_embeddings[c][None])[0]
    assert maps.error_mu[i, j].item() == pytest.approx(((fake - ctx.x[0, :, i, j]) ** 2).sum().item(), rel=1e-5)
    # a random latent code gives another map; the predicted labels are the arg-max
    assert not torch.allclose(inner, maps.error_random[~ignored][:, : 52 // s])
    pred = compute_feature_maps(model, image)
    assert pred.labels_from == "prediction" and torch.equal(pred.labels, pred.logits.argmax(0))
    x = torch.zeros(1, 2, 1, 2)
    err = reconstruction_error(lambda z, w: z + w, x, torch.ones(1, 2, 1, 2), torch.tensor([[1.0, 0.0]]),
                               torch.tensor([[[0, 255]]]))
    assert err[0, 0, 0].item() == 5.0 and torch.isnan(err[0, 0, 1])  # (1+1)^2 + (1+0)^2
    assert upsample_to_image(np.array([[1, 2], [3, 4]]), 3, (5, 4)).tolist() == [
        [1, 1, 1, 2], [1, 1, 1, 2], [1, 1, 1, 2], [3, 3, 3, 4], [3, 3, 3, 4]]


def test_tools_refuse_a_checkpoint_that_does_not_fit_the_config(setup, tmp_path):
    # detectron2's loader would only warn and keep those layers random
    image = setup["records"][0]["file_name"]
    with pytest.raises(ValueError, match="does not fit the model of this config"):
        load_tool("demo").main(["--config-file", setup["config"], "--input", image, "--output", str(tmp_path),
                                "MODEL.WEIGHTS", setup["weights"], "MODEL.ASPP_L.OUT_CHANNELS", "24"])


def test_tools_warn_loudly_without_trained_weights(setup, tmp_path):
    image = setup["records"][0]["file_name"]
    for weights, what in (("", "MODEL.WEIGHTS is empty: this runs a RANDOMLY INITIALISED model"),
                          ("/backbones/R-101.pkl", "is not a checkpoint of this project (.pth)")):
        with LogRecords() as log:
            try:
                load_tool("demo").main(["--config-file", setup["config"], "--input", image, "--output",
                                        str(tmp_path / "vis"), "MODEL.WEIGHTS", weights])
            except FileNotFoundError:
                assert weights  # the .pkl does not exist: the warning came first
        assert what in log.text() and "!" * 88 in log.text()
    with LogRecords() as log:
        load_tool("demo").main(["--config-file", setup["config"], "--input", image, "--output", str(tmp_path / "ok"),
                                "MODEL.WEIGHTS", setup["weights"]])
    assert "RANDOM" not in log.text()


def test_demo_names_and_skips_a_truncated_jpeg(setup, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    data = open(setup["records"][0]["file_name"], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    demo = load_tool("demo")
    with LogRecords() as log:
        rc = demo.main(["--config-file", setup["config"], "--input", str(truncated), setup["records"][1]["file_name"],
                        "--output", str(tmp_path / "vis"), "MODEL.WEIGHTS", setup["weights"]])
    assert rc == 0 and f"Skipping {truncated}: cannot read it as an image" in log.text() and "truncated" in log.text()
    summary = json.loads((tmp_path / "vis" / demo.SUMMARY_FILE).read_text())
    assert [s["input"] for s in summary["skipped"]] == [str(truncated)] and len(summary["written"]) == 1
