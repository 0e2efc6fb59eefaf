# Copyright (c) CaGNet-D2 contributors.
"""The class sets against shared/reference/datasets.md, spelled out by name here, and the shipped
GloVe-50 tables against a rebuild."""
import os

import numpy as np
import pytest

from cagnet.data.catalog import (
    CLASS_SETS,
    COCO_STUFF_182_NAMES,
    coco_stuff_raw_lut,
    get_class_set,
    pascal_context_459_to_59_lut,
    pascal_voc_raw_lut,
)
from cagnet.data.embeddings import (
    build_class_embeddings,
    load_class_embeddings,
    load_word_vectors,
    shipped_embeddings_file,
)

# --- datasets.md, COCO-stuff: "15 unseen (raw value = name)".
COCO_UNSEEN_BY_RAW = {
    20: "cow", 24: "giraffe", 32: "suitcase", 33: "frisbee", 40: "skateboard", 56: "carrot",
    86: "scissors", 99: "cardboard", 105: "clouds", 123: "grass", 144: "playingfield", 147: "river",
    148: "road", 168: "tree", 171: "wall-concrete",
}
COCO_UNUSED_RAW = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
# --- datasets.md, VOC: values 1..20 in VOC order; unseen raw 16..20.
VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
       "tvmonitor"]
VOC_UNSEEN = ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
# --- datasets.md, Context 33: raw ids 1..33.
CONTEXT_33 = VOC + ["sky", "grass", "ground", "road", "building", "tree", "water", "mountain", "wall",
                    "floor", "track", "keyboard", "ceiling"]
CONTEXT_33_UNSEEN = ["cow", "motorbike", "sofa", "cat"]
# --- datasets.md, ZS3Net settings.
VOC_ZS3_UNSEEN = ["cow", "motorbike", "aeroplane", "sofa"]  # "airplane" is VOC's aeroplane
CONTEXT_ZS3_UNSEEN = ["cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "keyboard",
                      "aeroplane"]
CONTEXT_59 = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
    "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road",
    "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
    "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]


def _split(key):
    cs = get_class_set(key)
    return cs, [cs.class_names[i] for i in cs.seen_ids], [cs.class_names[i] for i in cs.unseen_ids]


def test_coco_stuff_171():
    cs, seen, unseen = _split("coco_stuff_171")
    assert (cs.num_classes, len(seen), len(unseen)) == (171, 156, 15)
    assert sorted(unseen) == sorted(COCO_UNSEEN_BY_RAW.values())
    for raw, name in COCO_UNSEEN_BY_RAW.items():
        assert COCO_STUFF_182_NAMES[raw] == name
    assert list(cs.raw_ids) == [v for v in range(182) if v not in COCO_UNUSED_RAW]  # ascending raw order
    assert cs.class_names[0] == "person" and cs.class_names[-1] == "wood"
    assert cs.class_names[cs.raw_ids.index(144)] == "playingfield"
    lut = coco_stuff_raw_lut()
    assert lut[0] == 0 and lut[20] == 19 and lut[181] == 170 and lut[255] == 255
    assert all(lut[v] == 255 for v in COCO_UNUSED_RAW + [182, 200, 254])
    assert sorted(set(lut.tolist()) - {255}) == list(range(171))


def test_pascal_voc_20():
    cs, seen, unseen = _split("pascal_voc_20")
    assert list(cs.class_names) == VOC and "background" not in cs.class_names
    assert unseen == VOC_UNSEEN and seen == VOC[:15]
    assert [cs.raw_ids[cs.class_names.index(n)] for n in VOC_UNSEEN] == [16, 17, 18, 19, 20]
    lut = cs.raw_to_contiguous_lut()  # prepared VOC values -> this setting
    assert lut[0] == 255 and lut[1] == 0 and lut[20] == 19 and lut[255] == 255
    raw = pascal_voc_raw_lut()
    assert list(raw[:21]) == list(range(21)) and raw[21] == 255 and raw[255] == 255


def test_pascal_voc_21_zs3():
    cs, seen, unseen = _split("pascal_voc_21_zs3")
    assert list(cs.class_names) == ["background"] + VOC
    assert (cs.num_classes, len(seen), len(unseen)) == (21, 17, 4)
    assert sorted(unseen) == sorted(VOC_ZS3_UNSEEN) and "background" in seen


def test_pascal_context_33():
    cs, seen, unseen = _split("pascal_context_33")
    assert list(cs.class_names) == CONTEXT_33
    assert (cs.num_classes, len(seen), len(unseen)) == (33, 29, 4)
    assert sorted(unseen) == sorted(CONTEXT_33_UNSEEN)
    # raw_ids: values in the standard 59-class maps; "diningtable" is the 59-class "table".
    assert cs.raw_ids[CONTEXT_33.index("diningtable")] == CONTEXT_59.index("table") + 1
    for name in CONTEXT_33:
        if name != "diningtable":
            assert cs.raw_ids[CONTEXT_33.index(name)] == CONTEXT_59.index(name) + 1, name


def test_pascal_context_60_zs3_and_the_459_mapping():
    cs, seen, unseen = _split("pascal_context_60_zs3")
    assert list(cs.class_names) == ["background"] + CONTEXT_59
    assert (cs.num_classes, len(seen), len(unseen)) == (60, 50, 10)
    assert sorted(unseen) == sorted(CONTEXT_ZS3_UNSEEN) and "background" in seen
    lut = pascal_context_459_to_59_lut()
    # Full 459-class ids (labels.txt): 2 aeroplane, 397 table, 458 wood; 1 accordion is not one
    # of the 59; 0 unlabeled.
    assert lut[2] == 1 and lut[397] == CONTEXT_59.index("table") + 1 and lut[458] == 59
    assert lut[0] == 0 and lut[1] == 0 and len(lut) == 460
    assert sorted(set(lut.tolist())) == list(range(60))


@pytest.fixture(scope="module")
def glove():
    return load_word_vectors("glove50")


def test_shipped_tables_match_a_rebuild(glove):
    expected = {"coco_stuff_171", "pascal_voc_20", "pascal_voc_21_zs3", "pascal_context_33",
                "pascal_context_60_zs3", "synthetic_scenes"}
    assert expected <= set(CLASS_SETS)
    for key, cs in CLASS_SETS.items():
        path = shipped_embeddings_file(key)
        assert os.path.isfile(path), f"{key}: no shipped table; run tools/build_embeddings.py --all --source glove50"
        table = load_class_embeddings(path, expected_names=cs.class_names)
        assert table["sources"] == ["glove50"]
        assert table["vectors"].shape == (cs.num_classes, 50)
        rebuilt = build_class_embeddings(cs.class_names, [glove], cs.aliases)
        np.testing.assert_allclose(table["vectors"], rebuilt, rtol=0, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(np.linalg.norm(table["vectors"], axis=1), 1.0, atol=1e-5)


def test_aliases_are_looked_up(glove):
    voc = get_class_set("pascal_voc_20")
    row = build_class_embeddings(["pottedplant"], [glove], voc.aliases)[0]
    mean = (glove["potted"] + glove["plant"]) / 2
    np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
    coco = get_class_set("coco_stuff_171")
    assert coco.aliases["playingfield"] == "playing field" and coco.aliases["waterdrops"] == "water drops"
    with pytest.raises(KeyError, match="tvmonitor"):
        build_class_embeddings(["tvmonitor"], [glove], {})  # without its alias
