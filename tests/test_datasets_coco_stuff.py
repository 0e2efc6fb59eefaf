# Copyright (c) CaGNet-D2 contributors.
"""COCO-stuff 164k on a miniature copy in both raw on-disk formats (stuffthingmaps PNGs, and
stuff / instances JSON with polygons and RLE): prepare, the 171-class registration, the train
mapper, the evaluator, idempotent / resumable preparation and an eval-only run of the config."""
import json
import os

import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet import add_cagnet_config
from cagnet.data.catalog import COCO_STUFF_182_NAMES
from cagnet.data.datasets.register_coco_stuff import coco_stuff_paths, register_coco_stuff
from cagnet.data.register import PREPARED_MARKER, DatasetNotPreparedError

from _dataset_helpers import (
    H, REPO, W, evaluate, hiou, prepare_module, read_png, read_results, run_train_net_eval, snapshot,
    train_labels, write_jpeg, write_png,
)

prepare_coco = prepare_module("prepare_coco_stuff")

CONFIG = "configs/coco_stuff/cagnet_R101_os8_bs8_crop368_46k_cocostuff171.yaml"
TRAIN = ["000000000009", "000000000025"]
VAL = ["000000000139", "000000000285"]
IGNORE = 255
# stuffthingmaps values (COCO id - 1) -> contiguous class: v minus the unused ids below v.
PERSON, COW, STREET_SIGN, MIRROR, GRASS, PLAYINGFIELD, SKY_OTHER, WOOD = 0, 20, 11, 65, 123, 144, 156, 181
C = {PERSON: 0, COW: 19, GRASS: 112, PLAYINGFIELD: 133, SKY_OTHER: 145, WOOD: 170}

# Regions of each image: (stuffthingmaps value, rows, cols, kind); kind says in which JSON file
# (and how) the region is annotated: "poly" / "rle" things (instances), "stuff" (stuff, RLE),
# None: not annotated in the JSON (unused ids, unlabeled).
REGIONS = {
    TRAIN[0]: [(PERSON, (0, 8), (4, 36), "poly"), (COW, (8, 16), (4, 36), "rle"),
               (STREET_SIGN, (16, 24), (4, 36), None), (WOOD, (24, 32), (4, 36), "stuff"),
               (PLAYINGFIELD, (0, 32), (36, 40), "stuff")],  # cols 0-3 unlabeled
    TRAIN[1]: [(SKY_OTHER, (0, 16), (0, 40), "stuff"), (MIRROR, (16, 32), (0, 40), None)],
    VAL[0]: [(GRASS, (0, 16), (4, 40), "stuff"), (PERSON, (16, 32), (4, 40), "poly")],
    VAL[1]: [(MIRROR, (4, 32), (0, 40), None)],
}


def stuffthingmap(stem):
    raw = np.full((H, W), 255, np.uint8)
    for value, (r0, r1), (c0, c1), _ in REGIONS[stem]:
        raw[r0:r1, c0:c1] = value
    return raw


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def _segmentation(kind, rows, cols):
    from pycocotools import mask as mask_utils

    (r0, r1), (c0, c1) = rows, cols
    if kind == "poly":
        return [[c0, r0, c1, r0, c1, r1, c0, r1]]
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    if kind == "rle":
        return _uncompressed_rle(m)
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def make_raw_coco(root, with_json=False, folder="", category_id=None):
    """A miniature raw COCO-stuff copy. ``folder``: the JSON's file names (and the images) lie in
    this subfolder; ``category_id``: stuffthingmaps value -> the JSON's category id (default COCO's,
    value + 1); the JSON's ``categories`` name each id by its COCO-stuff name."""
    category_id = category_id or (lambda value: value + 1)
    coco = os.path.join(root, "coco")
    for split, stems in (("train2017", TRAIN), ("val2017", VAL)):
        for i, stem in enumerate(stems):
            write_jpeg(os.path.join(coco, split, folder, stem + ".jpg"), seed=i)
            write_png(os.path.join(coco, "stuffthingmaps", split, stem + ".png"), stuffthingmap(stem))
        if not with_json:
            continue
        images = [{"id": int(s), "file_name": os.path.join(folder, s + ".jpg"), "height": H, "width": W}
                  for s in stems]
        things, stuff = [], []
        for s in stems:
            for value, rows, cols, kind in REGIONS[s]:
                if kind is None:
                    continue
                ann = {"id": len(things) + len(stuff) + 1, "image_id": int(s), "category_id": category_id(value),
                       "segmentation": _segmentation(kind, rows, cols), "iscrowd": 0}
                (stuff if kind == "stuff" else things).append(ann)
        # Left out: a crowd region, and "other" (183), the thing pixels of the stuff annotations.
        things.append({"id": 100, "image_id": int(TRAIN[0]), "category_id": category_id(PERSON), "iscrowd": 1,
                       "segmentation": _uncompressed_rle(np.pad(np.ones((8, 32), np.uint8), ((16, 8), (4, 4))))})
        other_id = category_id(182)  # the value after wood: "other"
        stuff.append({"id": 101, "image_id": int(TRAIN[0]), "category_id": other_id, "iscrowd": 0,
                      "segmentation": _segmentation("stuff", (0, 16), (4, 36))})
        values = {"instances": range(0, 91), "stuff": range(91, 182)}
        os.makedirs(os.path.join(coco, "annotations"), exist_ok=True)
        for kind, anns in (("instances", things), ("stuff", stuff)):
            categories = [{"id": category_id(v), "name": COCO_STUFF_182_NAMES[v]} for v in values[kind]]
            if kind == "stuff":
                categories.append({"id": other_id, "name": "other"})
            with open(os.path.join(coco, "annotations", f"{kind}_{split}.json"), "w") as f:
                json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = make_raw_coco(str(tmp_path_factory.mktemp("coco_root")), with_json=True)
    counts = prepare_coco.main(["--root", root, "--workers", "2"])
    assert counts == {"train": 2, "val": 2}
    prefix = "mini_"
    register_coco_stuff(root, prefix=prefix)
    return root, prefix


def test_prepared_files(coco):
    root, _ = coco
    paths = coco_stuff_paths(root)
    a = read_png(os.path.join(paths["labels"]["train"], TRAIN[0] + ".png"))
    assert (a[0:8, 4:36] == C[PERSON]).all() and (a[8:16, 4:36] == C[COW]).all()
    assert (a[16:24, 4:36] == IGNORE).all()  # an unused id
    assert (a[24:32, 4:36] == C[WOOD]).all() and (a[:, 36:] == C[PLAYINGFIELD]).all()
    assert (a[:, 0:4] == IGNORE).all()  # unlabeled
    v2 = read_png(os.path.join(paths["labels"]["val"], VAL[1] + ".png"))
    assert (v2 == IGNORE).all()
    with open(paths["split_files"]["train"]) as f:
        assert f.read().split() == TRAIN
    with open(paths["split_files"]["val"]) as f:
        assert f.read().split() == VAL
    assert os.path.isfile(os.path.join(paths["prepared"], PREPARED_MARKER))


def test_json_source_gives_the_same_files(coco, tmp_path):
    root = make_raw_coco(str(tmp_path), with_json=True)
    assert prepare_coco.main(["--root", root, "--workers", "0", "--from-json"]) == {"train": 2, "val": 2}
    for split in ("train", "val"):
        png_dir, json_dir = coco_stuff_paths(coco[0])["labels"][split], coco_stuff_paths(root)["labels"][split]
        for stem in TRAIN if split == "train" else VAL:
            np.testing.assert_array_equal(read_png(os.path.join(json_dir, stem + ".png")),
                                          read_png(os.path.join(png_dir, stem + ".png")), err_msg=stem)


def test_json_with_folders_and_foreign_category_ids(coco, tmp_path):
    # Not COCO's ids (a permutation far from 1..183), file names inside folders: the labels must
    # be those of the stuffthingmaps route, under the same folders, and the copy must load.
    foreign = lambda value: 5000 + (value * 37) % 183  # noqa: E731
    root = make_raw_coco(str(tmp_path), with_json=True, folder=os.path.join("part1", "a"), category_id=foreign)
    assert prepare_coco.main(["--root", root, "--workers", "2", "--from-json"]) == {"train": 2, "val": 2}
    paths = coco_stuff_paths(root)
    for split, stems in (("train", TRAIN), ("val", VAL)):
        for stem in stems:
            np.testing.assert_array_equal(
                read_png(os.path.join(paths["labels"][split], "part1", "a", stem + ".png")),
                read_png(os.path.join(coco_stuff_paths(coco[0])["labels"][split], stem + ".png")), err_msg=stem)
        with open(paths["split_files"][split]) as f:
            assert f.read().split() == [os.path.join("part1", "a", s) for s in stems]
    register_coco_stuff(root, prefix="foreign_ids_")
    records = DatasetCatalog.get("foreign_ids_coco_stuff_171_train")
    assert [os.path.isfile(r["file_name"]) and os.path.isfile(r["sem_seg_file_name"]) for r in records] == [True] * 2
    # Read as COCO's ids, these ids are not COCO-stuff's: an error naming one.
    with pytest.raises(ValueError, match="category id 5000"):
        prepare_coco.main(["--root", root, "--workers", "0", "--from-json", "--categories-by-id"])


def test_json_category_errors_name_the_category(tmp_path):
    root = make_raw_coco(str(tmp_path), with_json=True)
    path = os.path.join(root, "coco", "annotations", "stuff_train2017.json")
    with open(path) as f:
        data = json.load(f)
    data["categories"][0]["name"] = "not-a-coco-class"
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="not-a-coco-class") as e:
        prepare_coco.main(["--root", root, "--workers", "0", "--from-json"])
    assert "stuff_train2017.json" in str(e.value)
    data["categories"] = data["categories"][1:]  # an annotation's category is no longer listed
    data["categories"].append({"id": 92, "name": "banner"})
    data["annotations"][0]["category_id"] = 4242
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="category id 4242"):
        prepare_coco.main(["--root", root, "--workers", "0", "--from-json"])
    # COCO's ids read as such give the same files as matching by name.
    make_raw_coco(root, with_json=True)
    prepare_coco.main(["--root", root, "--workers", "0", "--from-json", "--categories-by-id"])
    by_id = snapshot(coco_stuff_paths(root)["labels"]["train"])
    prepare_coco.main(["--root", root, "--workers", "0", "--from-json"])  # another way: rewritten
    by_name = snapshot(coco_stuff_paths(root)["labels"]["train"])
    assert {n: v[1] for n, v in by_id.items()} == {n: v[1] for n, v in by_name.items()}
    assert all(by_id[n][0] != by_name[n][0] for n in by_id)


def test_registration_metadata(coco):
    _, prefix = coco
    meta = MetadataCatalog.get(prefix + "coco_stuff_171_train")
    assert len(meta.stuff_classes) == 171 and meta.stuff_classes[C[COW]] == "cow"
    assert meta.stuff_classes[C[WOOD]] == "wood" and meta.stuff_classes[C[PLAYINGFIELD]] == "playingfield"
    assert len(meta.unseen_class_ids) == 15 and len(meta.seen_class_ids) == 156
    assert meta.label_lut is None  # prepared files hold the class indices
    register_coco_stuff(coco[0], prefix=prefix)  # again: harmless


def test_train_mapper(coco):
    _, prefix = coco
    labels = train_labels(prefix + "coco_stuff_171_train")
    a = labels[TRAIN[0]]
    assert (a[0:8, 4:36] == C[PERSON]).all()
    assert (a[8:16, 4:36] == IGNORE).all()  # cow: unseen
    assert (a[24:32, 4:36] == C[WOOD]).all()
    assert (a[:, 36:] == IGNORE).all()  # playingfield: unseen
    assert (a[16:24] == IGNORE).all() and (a[:, 0:4] == IGNORE).all()
    b = labels[TRAIN[1]]
    assert (b[0:16] == C[SKY_OTHER]).all() and (b[16:] == IGNORE).all()


def test_evaluator(coco, tmp_path):
    _, prefix = coco
    # Image 1: gt grass (unseen) rows 0-15 and person rows 16-31 on cols 4-39 (576 px each);
    # predicted grass on rows 0-11, person below. Image 2 is all ignore.
    p1 = np.full((H, W), C[PERSON])
    p1[0:12] = C[GRASS]
    r = evaluate(prefix + "coco_stuff_171_val", {VAL[0]: p1, VAL[1]: np.full((H, W), 3)}, 171,
                 output_dir=str(tmp_path))
    assert r["IoU-grass"] == pytest.approx(75.0)
    assert r["IoU-person"] == pytest.approx(80.0)
    assert r["mIoU-seen"] == pytest.approx(80.0) and r["mIoU-unseen"] == pytest.approx(75.0)
    assert r["hIoU"] == pytest.approx(hiou(80.0, 75.0))
    assert r["mIoU"] == pytest.approx(77.5)
    assert r["pACC"] == pytest.approx(87.5) and r["mACC-unseen"] == pytest.approx(75.0)
    names = MetadataCatalog.get(prefix + "coco_stuff_171_val").stuff_classes
    assert sum(not np.isnan(r[f"IoU-{n}"]) for n in names) == 2
    assert json.loads((tmp_path / "zs_sem_seg_results.json").read_text())["IoU-cow"] is None


def test_prepare_is_idempotent_and_resumable(tmp_path):
    root = make_raw_coco(str(tmp_path))
    prepare_coco.main(["--root", root, "--workers", "0"])
    paths = coco_stuff_paths(root)
    before = snapshot(paths["labels"]["train"])
    prepare_coco.main(["--root", root, "--workers", "0"])
    assert snapshot(paths["labels"]["train"]) == before

    name = "half_coco_"
    register_coco_stuff(root, prefix=name)
    os.remove(os.path.join(paths["prepared"], PREPARED_MARKER))
    os.remove(os.path.join(paths["labels"]["train"], TRAIN[0] + ".png"))
    with pytest.raises(DatasetNotPreparedError) as e:
        DatasetCatalog.get(name + "coco_stuff_171_train")
    assert paths["prepared"] in str(e.value)
    assert f"python datasets/prepare_coco_stuff.py --root {root}" in str(e.value)
    prepare_coco.main(["--root", root, "--workers", "0"])
    after = snapshot(paths["labels"]["train"])
    assert after[TRAIN[1] + ".png"] == before[TRAIN[1] + ".png"]
    assert after[TRAIN[0] + ".png"][1] == before[TRAIN[0] + ".png"][1]
    assert len(DatasetCatalog.get(name + "coco_stuff_171_train")) == 2

    # --force rewrites every file.
    prepare_coco.main(["--root", root, "--workers", "0", "--force"])
    forced = snapshot(paths["labels"]["train"])
    assert all(forced[n][0] != after[n][0] and forced[n][1] == after[n][1] for n in after)


def test_prepare_counts_what_it_ignores_and_refuses_undefined_values(tmp_path, capsys):
    root = make_raw_coco(str(tmp_path))
    prepare_coco.main(["--root", root, "--workers", "0"])
    out = capsys.readouterr().out
    # Ignored in train: the unused ids mirror (16x40) and street sign (8x32), unlabeled (4x32).
    assert ("coco_stuff train: 1024 of 2560 pixels (40.00%) written as ignore (255); "
            "raw 65: 640, raw 11: 256, raw 255: 128") in out
    bad = stuffthingmap(VAL[0])
    bad[0, 0:3] = 200  # beyond the 182 COCO values
    write_png(os.path.join(root, "coco", "stuffthingmaps", "val2017", VAL[0] + ".png"), bad)
    with pytest.raises(ValueError) as e:
        prepare_coco.main(["--root", root, "--workers", "0", "--force"])
    assert f"{VAL[0]}.png: raw label values 200 (3 px) are not defined" in str(e.value)
    assert "COCO category id - 1 (0..181" in str(e.value)
    assert not os.path.exists(os.path.join(coco_stuff_paths(root)["prepared"], PREPARED_MARKER))


def test_missing_inputs_are_clear_errors(tmp_path):
    root = str(tmp_path / "empty")
    register_coco_stuff(root, prefix="missing_coco_")
    with pytest.raises(DatasetNotPreparedError) as e:
        DatasetCatalog.get("missing_coco_coco_stuff_171_val")
    assert os.path.join(root, "coco", "stuffthingmaps_cagnet171") in str(e.value)
    assert "prepare_coco_stuff.py" in str(e.value)
    make_raw_coco(root)
    with pytest.raises(FileNotFoundError, match="stuff_train2017.json"):
        prepare_coco.main(["--root", root, "--from-json"])
    os.remove(os.path.join(root, "coco", "val2017", VAL[1] + ".jpg"))
    with pytest.raises(FileNotFoundError, match=VAL[1] + ".jpg"):
        prepare_coco.main(["--root", root, "--workers", "0"])
    assert not os.path.exists(os.path.join(coco_stuff_paths(root)["prepared"], PREPARED_MARKER))


def test_config_and_train_net_eval_only(coco, tmp_path):
    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, CONFIG))
    assert cfg.DATASETS.TRAIN == ("coco_stuff_171_train",) and cfg.DATASETS.TEST == ("coco_stuff_171_val",)
    assert cfg.SOLVER.D_BASE_LR == pytest.approx(5e-4) and cfg.SOLVER.MAX_ITER == 46000
    assert cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS == 40000 and cfg.MODEL.CAGNET.EMBEDDINGS_FILE == ""

    root, _ = coco
    out = str(tmp_path / "out")
    stdout, _ = run_train_net_eval(CONFIG, root, out)
    assert "Zero-shot results on coco_stuff_171_val" in stdout and "hIoU" in stdout
    res = read_results(out, "coco_stuff_171_val")
    assert len([key for key in res if key.startswith("IoU-")]) == 171
    # Only grass and person occur in the miniature val ground truth.
    assert sum(v is not None for k, v in res.items() if k.startswith("IoU-")) == 2
