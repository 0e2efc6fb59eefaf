# Copyright (c) CaGNet-D2 contributors.
"""Pascal-VOC 2012 + SBD on a miniature copy in the raw on-disk format: prepare, both registered
settings (20 classes without background; 21 with background, ZS3Net), the train mapper, the
evaluator, idempotent / resumable preparation and eval-only runs of both configs."""
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet.data.datasets.register_pascal_voc import pascal_voc_paths, register_pascal_voc
from cagnet.data.register import PREPARED_MARKER, DatasetNotPreparedError

from _dataset_helpers import (
    H, W, eval_config_in_process, evaluate, hiou, prepare_module, read_png, read_results,
    run_train_net_eval, snapshot, train_labels, write_jpeg, write_png,
)

prepare_voc = prepare_module("prepare_pascal_voc")

TRAIN = ["2007_000032", "2007_000039"]
VAL = ["2007_000033", "2007_000042"]
IGNORE = 255


def voc_palette():
    """The VOC colour map (index -> RGB), as in SegmentationClass/*.png."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def raw_labels():
    """Raw VOC values (0 background, 1..20, 255 boundary) of the miniature images."""
    a = np.zeros((H, W), np.uint8)  # rows 0-7 background
    a[8:16] = 1  # aeroplane (seen in VOC-20, unseen in ZS3)
    a[16:24] = 16  # pottedplant (unseen in VOC-20)
    a[24:32] = 10  # cow (unseen in ZS3)
    a[:, 0] = 255  # boundary
    b = np.full((H, W), 15, np.uint8)  # person
    b[16:] = 20  # tvmonitor
    b[0:2, 38:40] = 255  # boundary
    v1 = np.full((H, W), 17, np.uint8)  # sheep (unseen in VOC-20)
    v1[16:] = 1  # aeroplane
    v1[:, 0] = 255
    v1[0:4, 1:5] = 0  # background
    v2 = np.full((H, W), 20, np.uint8)  # tvmonitor
    v2[:, 0] = 255
    return {TRAIN[0]: a, TRAIN[1]: b, VAL[0]: v1, VAL[1]: v2}


def make_raw_voc(root):
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    labels = raw_labels()
    for i, stem in enumerate(TRAIN + VAL):
        write_jpeg(os.path.join(voc, "JPEGImages", stem + ".jpg"), seed=i)
    for stem in TRAIN:
        write_png(os.path.join(voc, "SegmentationClassAug", stem + ".png"), labels[stem])
    # SegmentationClassAug of the real download also holds the val images; val must be read
    # from SegmentationClass (palette PNGs) instead.
    write_png(os.path.join(voc, "SegmentationClassAug", VAL[0] + ".png"), np.zeros((H, W)))
    for stem in VAL:
        write_png(os.path.join(voc, "SegmentationClass", stem + ".png"), labels[stem], palette=voc_palette())
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, "train_aug.txt"), "w") as f:  # DeepLab's format
        f.writelines(f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png\n" for s in TRAIN)
    with open(os.path.join(lists, "val.txt"), "w") as f:
        f.writelines(s + "\n" for s in VAL)
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = make_raw_voc(str(tmp_path_factory.mktemp("voc_root")))
    counts = prepare_voc.main(["--root", root, "--workers", "2"])
    assert counts == {"train": 2, "val": 2}
    prefix = "mini_"
    register_pascal_voc(root, prefix=prefix)
    return root, prefix


def test_prepared_files(voc):
    root, _ = voc
    paths = pascal_voc_paths(root)
    raw = raw_labels()
    a = read_png(os.path.join(paths["labels"]["train"], TRAIN[0] + ".png"))
    np.testing.assert_array_equal(a, raw[TRAIN[0]])
    b = read_png(os.path.join(paths["labels"]["train"], TRAIN[1] + ".png"))
    assert b[0, 38] == IGNORE and b[0, 37] == 15 and b[20, 5] == 20
    # Palette PNG: the palette index is the class value (not the colour's luminance).
    v1 = read_png(os.path.join(paths["labels"]["val"], VAL[0] + ".png"))
    np.testing.assert_array_equal(v1, raw[VAL[0]])
    with open(paths["split_files"]["train"]) as f:
        assert f.read().split() == TRAIN
    with open(paths["split_files"]["val"]) as f:
        assert f.read().split() == VAL
    assert os.path.isfile(os.path.join(paths["prepared"], PREPARED_MARKER))


def test_registration_metadata(voc):
    _, prefix = voc
    m20 = MetadataCatalog.get(prefix + "pascal_voc_20_train")
    assert m20.stuff_classes[0] == "aeroplane" and len(m20.stuff_classes) == 20
    assert m20.unseen_class_ids == [15, 16, 17, 18, 19]
    assert m20.label_lut[0] == IGNORE and m20.label_lut[1] == 0 and m20.label_lut[20] == 19
    m21 = MetadataCatalog.get(prefix + "pascal_voc_21_zs3_val")
    assert m21.stuff_classes[:2] == ["background", "aeroplane"]
    assert m21.unseen_class_ids == [1, 10, 14, 18]  # aeroplane, cow, motorbike, sofa
    assert m21.evaluator_type == "zero_shot_sem_seg" and m21.ignore_label == IGNORE
    records = DatasetCatalog.get(prefix + "pascal_voc_20_train")
    assert [r["image_id"] for r in records] == TRAIN
    assert records[0]["file_name"].endswith(os.path.join("JPEGImages", TRAIN[0] + ".jpg"))
    # Registering again is harmless.
    register_pascal_voc(voc[0], prefix=prefix)


def test_train_mapper_voc20_ignores_background_and_unseen(voc):
    _, prefix = voc
    labels = train_labels(prefix + "pascal_voc_20_train")
    a = labels[TRAIN[0]]
    assert (a[0:8, 1:] == IGNORE).all()  # background is ignored in this setting
    assert (a[8:16, 1:] == 0).all()  # aeroplane -> 0
    assert (a[16:24, 1:] == IGNORE).all()  # pottedplant is unseen
    assert (a[24:32, 1:] == 9).all()  # cow -> 9
    assert (a[:, 0] == IGNORE).all()
    b = labels[TRAIN[1]]
    assert (b[16:] == IGNORE).all()  # tvmonitor is unseen
    assert b[5, 5] == 14 and b[0, 39] == IGNORE  # person; boundary


def test_train_mapper_voc21_zs3_keeps_background(voc):
    _, prefix = voc
    a = train_labels(prefix + "pascal_voc_21_zs3_train")[TRAIN[0]]
    assert (a[0:8, 1:] == 0).all()  # background is a seen class
    assert (a[8:16, 1:] == IGNORE).all()  # aeroplane is unseen here
    assert (a[16:24, 1:] == 16).all()  # pottedplant is seen here
    assert (a[24:32, 1:] == IGNORE).all()  # cow is unseen
    assert (a[:, 0] == IGNORE).all()


def test_evaluator_voc20(voc, tmp_path):
    _, prefix = voc
    # Image 1: gt sheep (16) rows 0-15 (608 px: 624 minus 16 background), aeroplane (0) rows
    # 16-31 (624 px); predicted sheep on rows 0-7, aeroplane elsewhere. Image 2: all tvmonitor
    # (19), predicted right.
    p1 = np.zeros((H, W), np.int64)
    p1[0:8] = 16
    p2 = np.full((H, W), 19)
    r = evaluate(prefix + "pascal_voc_20_val", {VAL[0]: p1, VAL[1]: p2}, 20, output_dir=str(tmp_path))
    iou_sheep, iou_aero, iou_tv = 296 / 608, 624 / 936, 1.0
    assert r["IoU-sheep"] == pytest.approx(100 * iou_sheep)
    assert r["IoU-aeroplane"] == pytest.approx(100 * iou_aero)
    assert r["IoU-tvmonitor"] == pytest.approx(100.0)
    assert np.isnan(r["IoU-cow"])  # absent from the ground truth: excluded from the means
    seen, unseen = 100 * iou_aero, 100 * (iou_sheep + iou_tv) / 2
    assert r["mIoU-seen"] == pytest.approx(seen)
    assert r["mIoU-unseen"] == pytest.approx(unseen)
    assert r["mIoU"] == pytest.approx(100 * (iou_sheep + iou_aero + iou_tv) / 3)
    assert r["hIoU"] == pytest.approx(hiou(seen, unseen))
    assert r["pACC"] == pytest.approx(100 * (296 + 624 + 1248) / (608 + 624 + 1248))
    assert os.path.isfile(tmp_path / "zs_sem_seg_results.json")


def test_evaluator_voc21_zs3_counts_background(voc):
    _, prefix = voc
    # Perfect except the 16 background pixels of image 1, predicted aeroplane.
    raw = raw_labels()
    p1 = np.where(raw[VAL[0]] == 255, 0, raw[VAL[0]]).astype(np.int64)
    p1[0:4, 1:5] = 1
    p2 = np.full((H, W), 20)
    r = evaluate(prefix + "pascal_voc_21_zs3_val", {VAL[0]: p1, VAL[1]: p2}, 21)
    assert r["IoU-background"] == pytest.approx(0.0)
    assert r["IoU-aeroplane"] == pytest.approx(100 * 624 / 640)
    assert r["IoU-sheep"] == pytest.approx(100.0) and r["IoU-tvmonitor"] == pytest.approx(100.0)
    assert r["mIoU-seen"] == pytest.approx(100 * (0 + 1 + 1) / 3)  # background, sheep, tvmonitor
    assert r["mIoU-unseen"] == pytest.approx(100 * 624 / 640)  # aeroplane
    assert r["pACC"] == pytest.approx(100 * (608 + 624 + 1248) / (16 + 608 + 624 + 1248))


def test_prepare_is_idempotent_and_resumable(tmp_path):
    root = make_raw_voc(str(tmp_path))
    prepare_voc.main(["--root", root, "--workers", "0"])
    paths = pascal_voc_paths(root)
    before = snapshot(paths["labels"]["train"])
    assert prepare_voc.main(["--root", root, "--workers", "0"]) == {"train": 2, "val": 2}
    assert snapshot(paths["labels"]["train"]) == before  # nothing rewritten

    # An interrupted run: the marker is gone, one output is missing, a temporary file is left.
    name = "half_voc_"
    register_pascal_voc(root, prefix=name)
    os.remove(os.path.join(paths["prepared"], PREPARED_MARKER))
    os.remove(os.path.join(paths["labels"]["train"], TRAIN[1] + ".png"))
    stale = os.path.join(paths["labels"]["train"], TRAIN[1] + ".png.999.tmp")
    open(stale, "wb").close()
    with pytest.raises(DatasetNotPreparedError) as e:
        DatasetCatalog.get(name + "pascal_voc_20_train")
    assert paths["prepared"] in str(e.value)
    assert f"python datasets/prepare_pascal_voc.py --root {root}" in str(e.value)

    prepare_voc.main(["--root", root, "--workers", "0"])
    after = snapshot(paths["labels"]["train"])
    assert after[TRAIN[0] + ".png"] == before[TRAIN[0] + ".png"]  # kept
    assert after[TRAIN[1] + ".png"][1] == before[TRAIN[1] + ".png"][1]  # rewritten, same content
    assert not os.path.exists(stale)
    assert len(DatasetCatalog.get(name + "pascal_voc_20_train")) == 2


def test_prepare_names_undefined_values_undecodable_images_and_size_mismatches(tmp_path, capsys):
    root = make_raw_voc(str(tmp_path))
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    paths = pascal_voc_paths(root)
    bad_label = raw_labels()[TRAIN[1]]
    bad_label[0:2, 38:40] = 100  # not a VOC value
    write_png(os.path.join(voc, "SegmentationClassAug", TRAIN[1] + ".png"), bad_label)
    truncated = os.path.join(voc, "JPEGImages", VAL[0] + ".jpg")
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    write_jpeg(os.path.join(voc, "JPEGImages", VAL[1] + ".jpg"), h=H + 1)  # one row more than its label
    with pytest.raises(ValueError) as e:
        prepare_voc.main(["--root", root, "--workers", "2"])
    message = str(e.value)
    assert "1 of 2 pascal_voc train files" in message
    assert TRAIN[1] + ".png: raw label values 100 (4 px)" in message and "1..20 (the classes)" in message
    assert "pascal_voc_raw_lut" in message and "--invalid-labels ignore" in message
    assert not os.path.exists(os.path.join(paths["prepared"], PREPARED_MARKER))
    assert not os.path.exists(os.path.join(paths["labels"]["train"], TRAIN[1] + ".png"))  # not written
    assert os.path.exists(os.path.join(paths["labels"]["train"], TRAIN[0] + ".png"))  # the good one is
    # The train split stops the run; the val faults are found once train is through.
    write_png(os.path.join(voc, "SegmentationClassAug", TRAIN[1] + ".png"), raw_labels()[TRAIN[1]])
    with pytest.raises(ValueError) as e:
        prepare_voc.main(["--root", root, "--workers", "0"])
    message = str(e.value)
    assert "2 of 2 pascal_voc val files" in message
    assert f"{truncated}: cannot decode this image" in message
    assert f"is {W}x{H} (width x height) but its image" in message and f"is {W}x{H + 1}" in message

    # --invalid-labels ignore maps undefined values to 255 and counts them; ignore pixels are counted by value.
    write_jpeg(truncated, seed=2)
    write_jpeg(os.path.join(voc, "JPEGImages", VAL[1] + ".jpg"), seed=3)
    write_png(os.path.join(voc, "SegmentationClassAug", TRAIN[1] + ".png"), bad_label)
    capsys.readouterr()
    assert prepare_voc.main(["--root", root, "--workers", "0", "--force", "--invalid-labels", "ignore"]) == {
        "train": 2, "val": 2}
    out = capsys.readouterr().out
    assert "pascal_voc train: 32 of 2560 pixels (1.25%) written as ignore (255); raw 255: 32" in out
    assert "pascal_voc train: 4 pixels of undefined raw values written as ignore (255)" in out and "raw 100: 4" in out
    assert (read_png(os.path.join(paths["labels"]["train"], TRAIN[1] + ".png"))[0:2, 38:40] == IGNORE).all()
    assert os.path.exists(os.path.join(paths["prepared"], PREPARED_MARKER))


def test_missing_dataset_is_a_clear_error(tmp_path):
    root = str(tmp_path / "empty")
    register_pascal_voc(root, prefix="missing_voc_")
    with pytest.raises(DatasetNotPreparedError) as e:
        DatasetCatalog.get("missing_voc_pascal_voc_21_zs3_val")
    assert os.path.join(root, "VOCdevkit", "VOC2012", "annotations_cagnet") in str(e.value)
    assert "prepare_pascal_voc.py" in str(e.value)
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        prepare_voc.main(["--root", root])
    # A missing split list is named too.
    make_raw_voc(root)
    os.remove(os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "train_aug.txt"))
    with pytest.raises(FileNotFoundError, match="train_aug.txt"):
        prepare_voc.main(["--root", root])


def test_train_net_eval_only_voc_configs(voc, tmp_path):
    """The paper config runs through tools/train_net.py (with $DETECTRON2_DATASETS pointing at
    the miniature copy); the ZS3Net config is evaluated the same way in this process."""
    root, prefix = voc
    out = str(tmp_path / "voc20")
    stdout, _ = run_train_net_eval("configs/pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc20.yaml", root, out)
    assert "Zero-shot results on pascal_voc_20_val" in stdout and "hIoU" in stdout
    res = read_results(out, "pascal_voc_20_val")
    assert len([key for key in res if key.startswith("IoU-")]) == 20
    assert 0.0 <= res["mIoU"] <= 100.0 and res["hIoU"] is not None

    out = str(tmp_path / "voc21")
    res = eval_config_in_process("configs/pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc21_zs3.yaml",
                                 prefix + "pascal_voc_21_zs3_train", prefix + "pascal_voc_21_zs3_val", out)
    assert len([key for key in res if key.startswith("IoU-")]) == 21 and "IoU-background" in res
    assert read_results(out, prefix + "pascal_voc_21_zs3_val")["hIoU"] == pytest.approx(res["hIoU"])
