#!/usr/bin/env python
# Copyright (c) CaGNet-D2 contributors.
"""Prepare COCO-stuff 164k (171 classes) for CaGNet-D2: ``coco_stuff_171_{train,val}``.

  python datasets/prepare_coco_stuff.py [--root $DETECTRON2_DATASETS] [--workers N] [--from-json]

Input (under ROOT, see datasets/README.md):
  coco/{train2017,val2017}/*.jpg
  coco/stuffthingmaps/{train2017,val2017}/*.png   (stuffthingmaps_trainval2017.zip; value = COCO
                                                   category id - 1, 255 = unlabeled)
  or, with --from-json, coco/annotations/stuff_{train,val}2017.json (stuff_trainval2017.zip) and
  coco/annotations/instances_{train,val}2017.json (annotations_trainval2017.zip): things from
  the instances (crowd regions left out), then stuff on top; "other" (id 183) is not a class.
  Category ids are read through each file's own ``categories`` list, by name (default; a name
  that is not one of COCO-stuff's 182 is an error naming it) or, with --categories-by-id, as
  COCO's ids (1..182). A ``file_name`` may hold folders; the label PNG goes into the same ones.
Output: coco/stuffthingmaps_cagnet171/{train2017,val2017}/*.png with contiguous classes 0..170
(ascending raw order; the 11 unused ids and unlabeled -> 255), the split lists
{train2017,val2017}.txt and, last, the completion marker. A raw value other than 0..181 and 255
is an error naming the file (--invalid-labels ignore: mapped to 255 and counted); each image is
decoded once and its size compared with its label's.
"""
import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _prepare_common as common  # noqa: E402

from cagnet.data.catalog import COCO_STUFF_182_NAMES, coco_stuff_raw_lut  # noqa: E402
from cagnet.data.datasets.register_coco_stuff import coco_stuff_paths  # noqa: E402
from cagnet.data.register import datasets_root  # noqa: E402

OTHER_ID = 183  # stuff_*.json: "other", the thing pixels of the stuff-only annotations
OTHER_NAME = "other"
MAPPING = common.LabelMapping(
    coco_stuff_raw_lut(), [*range(182), 255],
    "stuffthingmaps values are COCO category id - 1 (0..181; the 11 ids COCO never annotates are ignored) "
    "and 255 (unlabeled) (cagnet.data.catalog.coco_stuff_raw_lut)",
)


def _normalise(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


# COCO-stuff name -> stuffthingmaps value (COCO id - 1)
_VALUE_OF_NAME = {_normalise(n): v for v, n in enumerate(COCO_STUFF_182_NAMES)}


def category_values(path, categories, by_id=False):
    """{category id of this file: stuffthingmaps value, or None for "other"} from the file's own
    ``categories``, matched by name (COCO-stuff's names; case, '_' and ' ' runs ignored). With
    ``by_id`` the ids are COCO's (value = id - 1, listed or not). A category that maps to no
    COCO-stuff class is an error naming it."""
    if by_id:
        values = {i: i - 1 for i in range(1, len(COCO_STUFF_182_NAMES) + 1)}
        values[OTHER_ID] = None
        for cat in categories or []:
            if cat.get("id") not in values:
                raise ValueError(f"{path}: category id {cat.get('id')!r} ({cat.get('name')!r}) is not a COCO-stuff "
                                 f"id (1..182, {OTHER_ID} = other); without --categories-by-id categories are "
                                 "matched by name")
        return values
    values = {}
    for cat in categories or []:
        cid, name = cat.get("id"), _normalise(cat.get("name", ""))
        if name == OTHER_NAME:
            values[cid] = None
        elif name in _VALUE_OF_NAME:
            values[cid] = _VALUE_OF_NAME[name]
        else:
            raise ValueError(f"{path}: category {cid!r} {cat.get('name')!r} is not a COCO-stuff class name (one of "
                             f"the 182 in cagnet.data.catalog.COCO_STUFF_182_NAMES, or {OTHER_NAME!r}); "
                             "--categories-by-id reads the ids as COCO's instead")
    return values


def convert_png(task, options):
    dst, src, image = task
    return common.convert_label(dst, common.read_label_png(src), MAPPING, image, src, options)


def convert_json(task, options):
    dst, height, width, annotations, image = task
    raw = np.full((height, width), 255, dtype=np.int64)  # int64: an id beyond 255 is reported, not wrapped
    for value, segmentation in annotations:  # later annotations are drawn over earlier ones
        raw[common.decode_segmentation(segmentation, height, width).astype(bool)] = value
    os.makedirs(os.path.dirname(dst), exist_ok=True)  # a file_name may hold folders
    return common.convert_label(dst, raw, MAPPING, image, f"{dst} (from the JSON annotations)", options)


def json_tasks(stuff_json, instances_json, out_dir, categories_by_id=False):
    """(stems, tasks) of one split from the stuff and instances annotation files."""
    images, per_image = {}, defaultdict(list)
    for path in (instances_json, stuff_json):  # things first, stuff over them
        with open(path) as f:
            data = json.load(f)
        values = category_values(path, data.get("categories"), by_id=categories_by_id)
        for img in data["images"]:
            images[img["id"]] = img
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            if ann["category_id"] not in values:
                raise ValueError(f"{path}: annotation {ann.get('id')!r} of image {ann['image_id']!r} has category "
                                 f"id {ann['category_id']!r}, which the file's 'categories' do not list")
            value = values[ann["category_id"]]
            if value is not None:  # "other": not a class
                per_image[ann["image_id"]].append((value, ann["segmentation"]))
        del data
    tasks, stems = [], []
    for image_id in sorted(images, key=lambda i: images[i]["file_name"]):
        img = images[image_id]
        stem = os.path.splitext(img["file_name"])[0]
        stems.append(stem)
        annotations = per_image.get(image_id, [])
        tasks.append((os.path.join(out_dir, stem + ".png"), img["height"], img["width"], annotations))
    return stems, tasks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, datasets_root())
    parser.add_argument("--from-json", action="store_true",
                        help="read coco/annotations/{stuff,instances}_*.json instead of the stuffthingmaps")
    parser.add_argument("--categories-by-id", action="store_true",
                        help="with --from-json: read category ids as COCO's (1..182) instead of matching the "
                             "JSON's category names")
    args = parser.parse_args(argv)
    paths = coco_stuff_paths(args.root)
    splits = ("train", "val")

    common.require([paths["images"][s] for s in splits], "Image directory")
    if args.from_json:
        common.require([paths[k][s] for s in splits for k in ("stuff_json", "instances_json")],
                       "COCO-stuff annotation file")
    else:
        common.require([paths["raw_labels"][s] for s in splits], "stuffthingmaps directory")
    state = {"dataset": "coco_stuff", "source": "json" if args.from_json else "stuffthingmaps"}
    if args.from_json:  # how category ids were read decides the files: another way rewrites them
        state["categories"] = "id" if args.categories_by_id else "name"
    common.begin(paths["prepared"], [paths["labels"][s] for s in splits], state, args.force)

    split_lists, counts = {}, {}
    for split in splits:
        out_dir = paths["labels"][split]
        if args.from_json:
            stems, tasks = json_tasks(paths["stuff_json"][split], paths["instances_json"][split], out_dir,
                                      categories_by_id=args.categories_by_id)
            fn = convert_json
        else:
            raw_dir = paths["raw_labels"][split]
            stems = sorted(os.path.splitext(n)[0] for n in os.listdir(raw_dir) if n.endswith(".png"))
            tasks = [(os.path.join(out_dir, s + ".png"), os.path.join(raw_dir, s + ".png")) for s in stems]
            fn = convert_png
        if not stems:
            where = paths["stuff_json" if args.from_json else "raw_labels"][split]
            raise FileNotFoundError(f"No labels of split {split!r} in {where}")
        common.convert_split(fn, tasks, stems, paths["images"][split], args.workers, f"coco_stuff {split}",
                             options=vars(args), mapping=MAPPING)
        split_lists[paths["split_files"][split]] = stems
        counts[split] = len(stems)
    common.finish(paths["prepared"], split_lists, {"splits": counts})
    return counts


if __name__ == "__main__":
    common.cli(main)
