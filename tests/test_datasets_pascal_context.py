# Copyright (c) CaGNet-D2 contributors.
"""Pascal-Context on a miniature copy in both raw on-disk formats (trainval/*.mat with 459-class
LabelMaps, and trainval_merged.json with RLE masks): prepare, the 33-class (paper) and 60-class
(ZS3Net) settings, the train mapper, the evaluator, idempotent / resumable preparation and
eval-only runs of both configs."""
import json
import os

import numpy as np
import pytest
from scipy.io import savemat

from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet.data.datasets.register_pascal_context import pascal_context_paths, register_pascal_context
from cagnet.data.register import PREPARED_MARKER, DatasetNotPreparedError

from _dataset_helpers import (
    H, W, eval_config_in_process, evaluate, hiou, prepare_module, read_png, read_results,
    run_train_net_eval, snapshot, train_labels, write_jpeg,
)

prepare_context = prepare_module("prepare_pascal_context")

TRAIN = ["2008_000002", "2008_000003"]
VAL = ["2008_000007", "2008_000008"]
IGNORE = 255
# 459-class ids used below, and their 59-class values.
AEROPLANE, BAG, CAT, COW, SKY, TABLE, ACCORDION = 2, 9, 65, 98, 360, 397, 1
V59 = {0: 0, ACCORDION: 0, AEROPLANE: 1, BAG: 2, CAT: 15, COW: 20, SKY: 47, TABLE: 50}


def regions():
    """Per image, the (459-class id, row slice, col slice) rectangles drawn in order (0 elsewhere)."""
    return {
        TRAIN[0]: [(AEROPLANE, slice(0, 8), slice(None)), (COW, slice(8, 16), slice(None)),
                   (BAG, slice(16, 24), slice(None)),  # rows 24-31 stay unlabeled
                   (ACCORDION, slice(None), slice(0, 4)),  # not one of the 59 -> background
                   (TABLE, slice(None), slice(36, 40))],  # "diningtable" of the 33 classes
        TRAIN[1]: [(SKY, slice(None), slice(None)), (CAT, slice(20, 32), slice(10, 30))],
        VAL[0]: [(SKY, slice(0, 16), slice(4, 40)), (CAT, slice(16, 32), slice(4, 40))],  # cols 0-3 unlabeled
        VAL[1]: [(BAG, slice(None), slice(None))],  # outside the 33 classes: all ignored there
    }


def label_map_459(stem):
    raw = np.zeros((H, W), np.uint16)
    for cid, rows, cols in regions()[stem]:
        raw[rows, cols] = cid
    return raw


def _voc2010(root):
    return os.path.join(root, "VOCdevkit", "VOC2010")


def make_raw_context(root, source):
    voc = _voc2010(root)
    for i, stem in enumerate(TRAIN + VAL):
        write_jpeg(os.path.join(voc, "JPEGImages", stem + ".jpg"), seed=i)
    if source == "mat":
        os.makedirs(os.path.join(voc, "trainval"), exist_ok=True)
        for stem in TRAIN + VAL:
            savemat(os.path.join(voc, "trainval", stem + ".mat"), {"LabelMap": label_map_459(stem)})
        os.makedirs(os.path.join(voc, "ImageSets", "Main"), exist_ok=True)
        for split, stems in (("train", TRAIN), ("val", VAL)):
            with open(os.path.join(voc, "ImageSets", "Main", split + ".txt"), "w") as f:
                f.writelines(s + "\n" for s in stems)
    else:
        from pycocotools import mask as mask_utils

        images, anns = [], []
        for n, stem in enumerate(TRAIN + VAL):
            image_id = int(stem.replace("_", ""))
            images.append({"image_id": image_id, "file_name": stem + ".jpg", "height": H, "width": W,
                           "phase": "train" if stem in TRAIN else "val"})
            for cid, rows, cols in regions()[stem]:
                m = np.zeros((H, W), np.uint8)
                m[rows, cols] = 1
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid,
                             "segmentation": rle, "iscrowd": 0})
        with open(os.path.join(voc, "trainval_merged.json"), "w") as f:
            json.dump({"images": images, "annos_segmentation": anns, "categories": []}, f)
    return root


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    root = make_raw_context(str(tmp_path_factory.mktemp("context_root")), "mat")
    counts = prepare_context.main(["--root", root, "--workers", "2"])
    assert counts == {"train": 2, "val": 2}
    prefix = "mini_"
    register_pascal_context(root, prefix=prefix)
    return root, prefix


def test_prepared_files_are_the_59_class_maps(context):
    root, _ = context
    paths = pascal_context_paths(root)
    for split, stems in (("train", TRAIN), ("val", VAL)):
        for stem in stems:
            got = read_png(os.path.join(paths["labels"][split], stem + ".png"))
            np.testing.assert_array_equal(got, np.vectorize(V59.get)(label_map_459(stem)))
        with open(paths["split_files"][split]) as f:
            assert f.read().split() == stems
    assert os.path.isfile(os.path.join(paths["prepared"], PREPARED_MARKER))


def test_json_source_gives_the_same_files(context, tmp_path):
    root = make_raw_context(str(tmp_path), "json")
    assert prepare_context.main(["--root", root, "--workers", "0"]) == {"train": 2, "val": 2}
    for split in ("train", "val"):
        mat_dir = pascal_context_paths(context[0])["labels"][split]
        json_dir = pascal_context_paths(root)["labels"][split]
        names = sorted(os.listdir(mat_dir))
        assert names == sorted(os.listdir(json_dir)) and len(names) == 2
        for name in names:
            np.testing.assert_array_equal(read_png(os.path.join(mat_dir, name)),
                                          read_png(os.path.join(json_dir, name)), err_msg=name)


def test_registration_metadata(context):
    _, prefix = context
    m33 = MetadataCatalog.get(prefix + "pascal_context_33_train")
    assert len(m33.stuff_classes) == 33 and m33.stuff_classes[10] == "diningtable"
    assert m33.unseen_class_ids == [7, 9, 13, 17]  # cat, cow, motorbike, sofa
    assert m33.label_lut[V59[TABLE]] == 10 and m33.label_lut[V59[SKY]] == 20
    assert m33.label_lut[0] == IGNORE and m33.label_lut[V59[BAG]] == IGNORE
    m60 = MetadataCatalog.get(prefix + "pascal_context_60_zs3_val")
    assert len(m60.stuff_classes) == 60 and m60.stuff_classes[0] == "background"
    assert m60.stuff_classes[V59[TABLE]] == "table" and len(m60.unseen_class_ids) == 10
    register_pascal_context(context[0], prefix=prefix)  # again: harmless


def test_train_mapper_context33(context):
    _, prefix = context
    a = train_labels(prefix + "pascal_context_33_train")[TRAIN[0]]
    assert (a[0:8, 4:36] == 0).all()  # aeroplane
    assert (a[8:16, 4:36] == IGNORE).all()  # cow: unseen
    assert (a[16:24, 4:36] == IGNORE).all()  # bag: not one of the 33
    assert (a[24:32, 4:36] == IGNORE).all()  # unlabeled
    assert (a[:, 0:4] == IGNORE).all()  # another Context class (background)
    assert (a[:, 36:40] == 10).all()  # table -> diningtable
    b = train_labels(prefix + "pascal_context_33_train")[TRAIN[1]]
    assert b[0, 0] == 20 and b[25, 15] == IGNORE  # sky; cat is unseen


def test_train_mapper_context60_zs3(context):
    _, prefix = context
    a = train_labels(prefix + "pascal_context_60_zs3_train")[TRAIN[0]]
    assert (a[0:8, 4:36] == IGNORE).all()  # aeroplane: unseen in this setting
    assert (a[8:16, 4:36] == IGNORE).all()  # cow: unseen
    assert (a[16:24, 4:36] == V59[BAG]).all()  # bag: seen here
    assert (a[24:32, 4:36] == 0).all() and (a[:, 0:4] == 0).all()  # background is a class
    assert (a[:, 36:40] == V59[TABLE]).all()


def test_evaluator_context33(context):
    _, prefix = context
    # Image 1: gt sky (20) rows 0-15 and cat (7) rows 16-31 on cols 4-39 (576 px each); predicted
    # sky on rows 0-23, cat on rows 24-31. Image 2 is all bag: ignored in this setting.
    p1 = np.full((H, W), 20)
    p1[24:] = 7
    r = evaluate(prefix + "pascal_context_33_val", {VAL[0]: p1, VAL[1]: np.zeros((H, W))}, 33)
    assert r["IoU-sky"] == pytest.approx(100 * 576 / 864)
    assert r["IoU-cat"] == pytest.approx(50.0)
    assert r["mIoU-seen"] == pytest.approx(100 * 2 / 3)  # only sky occurs among the seen
    assert r["mIoU-unseen"] == pytest.approx(50.0)
    assert r["hIoU"] == pytest.approx(hiou(200 / 3, 50.0))
    assert r["pACC"] == pytest.approx(100 * (576 + 288) / 1152)
    assert np.isnan(r["IoU-aeroplane"])


def test_evaluator_context60_zs3(context):
    _, prefix = context
    # Everything right: background (cols 0-3 of image 1), sky, cat and bag are all classes here.
    p1 = np.zeros((H, W), np.int64)
    p1[0:16, 4:] = V59[SKY]
    p1[16:, 4:] = V59[CAT]
    r = evaluate(prefix + "pascal_context_60_zs3_val", {VAL[0]: p1, VAL[1]: np.full((H, W), V59[BAG])}, 60)
    for key in ("IoU-background", "IoU-sky", "IoU-cat", "IoU-bag", "mIoU", "mIoU-unseen", "hIoU"):
        assert r[key] == pytest.approx(100.0), key
    assert r["pACC"] == pytest.approx(100.0) and np.isnan(r["IoU-cow"])


def test_prepare_is_idempotent_and_resumable(tmp_path):
    root = make_raw_context(str(tmp_path), "mat")
    prepare_context.main(["--root", root, "--workers", "0"])
    paths = pascal_context_paths(root)
    before = snapshot(paths["labels"]["val"])
    prepare_context.main(["--root", root, "--workers", "0"])
    assert snapshot(paths["labels"]["val"]) == before

    name = "half_context_"
    register_pascal_context(root, prefix=name)
    os.remove(os.path.join(paths["prepared"], PREPARED_MARKER))
    os.remove(os.path.join(paths["labels"]["val"], VAL[0] + ".png"))
    with pytest.raises(DatasetNotPreparedError) as e:
        DatasetCatalog.get(name + "pascal_context_33_val")
    assert paths["prepared"] in str(e.value) and "prepare_pascal_context.py" in str(e.value)
    prepare_context.main(["--root", root, "--workers", "0"])
    after = snapshot(paths["labels"]["val"])
    assert after[VAL[1] + ".png"] == before[VAL[1] + ".png"]
    assert after[VAL[0] + ".png"][1] == before[VAL[0] + ".png"][1]
    assert len(DatasetCatalog.get(name + "pascal_context_33_val")) == 2

    # Another raw source rewrites every file (a state file records what made them).
    make_raw_context(root, "json")
    prepare_context.main(["--root", root, "--workers", "0", "--source", "json"])
    switched = snapshot(paths["labels"]["val"])
    assert all(switched[n][0] != after[n][0] and switched[n][1] == after[n][1] for n in after)

    # A label file that a split list names but that is missing is an error naming it, and the
    # copy stays unfinished.
    os.remove(os.path.join(_voc2010(root), "trainval", VAL[1] + ".mat"))
    with pytest.raises(FileNotFoundError, match=VAL[1] + ".mat"):
        prepare_context.main(["--root", root, "--workers", "0", "--source", "mat"])
    assert not os.path.exists(os.path.join(paths["prepared"], PREPARED_MARKER))


def test_missing_dataset_is_a_clear_error(tmp_path):
    root = str(tmp_path / "empty")
    register_pascal_context(root, prefix="missing_context_")
    with pytest.raises(DatasetNotPreparedError) as e:
        DatasetCatalog.get("missing_context_pascal_context_60_zs3_train")
    assert os.path.join(root, "VOCdevkit", "VOC2010", "annotations_cagnet") in str(e.value)
    assert "prepare_pascal_context.py" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        prepare_context.main(["--root", root])
    assert "trainval_merged.json" in str(e.value) and os.path.join("VOC2010", "trainval") in str(e.value)


def test_train_net_eval_only_context_configs(context, tmp_path):
    root, prefix = context
    out = str(tmp_path / "context33")
    stdout, _ = run_train_net_eval("configs/pascal_context/cagnet_R101_os8_bs8_crop368_50k_context33.yaml",
                                   root, out)
    assert "Zero-shot results on pascal_context_33_val" in stdout and "hIoU" in stdout
    res = read_results(out, "pascal_context_33_val")
    assert len([key for key in res if key.startswith("IoU-")]) == 33
    assert 0.0 <= res["mIoU"] <= 100.0

    out = str(tmp_path / "context60")
    res = eval_config_in_process("configs/pascal_context/cagnet_R101_os8_bs8_crop368_50k_context60_zs3.yaml",
                                 prefix + "pascal_context_60_zs3_train", prefix + "pascal_context_60_zs3_val", out)
    assert len([key for key in res if key.startswith("IoU-")]) == 60
    assert read_results(out, prefix + "pascal_context_60_zs3_val")["mIoU"] == pytest.approx(res["mIoU"])
