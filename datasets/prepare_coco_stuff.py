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

from cagnet.data.catalog import coco_stuff_raw_lut  # noqa: E402
from cagnet.data.datasets.register_coco_stuff import coco_stuff_paths  # noqa: E402
from cagnet.data.register import datasets_root  # noqa: E402

OTHER_ID = 183  # stuff_*.json: "other", the thing pixels of the stuff-only annotations
MAPPING = common.LabelMapping(
    coco_stuff_raw_lut(), [*range(182), 255],
    "stuffthingmaps values are COCO category id - 1 (0..181; the 11 ids COCO never annotates are ignored) "
    "and 255 (unlabeled) (cagnet.data.catalog.coco_stuff_raw_lut)",
)


def convert_png(task, options):
    dst, src, image = task
    return common.convert_label(dst, common.read_label_png(src), MAPPING, image, src, options)


def convert_json(task, options):
    dst, height, width, annotations, image = task
    raw = np.full((height, width), 255, dtype=np.int64)  # int64: an id beyond 255 is reported, not wrapped
    for value, segmentation in annotations:  # later annotations are drawn over earlier ones
        raw[common.decode_segmentation(segmentation, height, width).astype(bool)] = value
    return common.convert_label(dst, raw, MAPPING, image, f"{dst} (from the JSON annotations)", options)


def json_tasks(stuff_json, instances_json, out_dir):
    """(stems, tasks) of one split from the stuff and instances annotation files."""
    images, per_image = {}, defaultdict(list)
    for path in (instances_json, stuff_json):  # things first, stuff over them
        with open(path) as f:
            data = json.load(f)
        for img in data["images"]:
            images[img["id"]] = img
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0) or ann["category_id"] == OTHER_ID:
                continue
            per_image[ann["image_id"]].append((ann["category_id"] - 1, ann["segmentation"]))
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
    args = parser.parse_args(argv)
    paths = coco_stuff_paths(args.root)
    splits = ("train", "val")

    common.require([paths["images"][s] for s in splits], "Image directory")
    if args.from_json:
        common.require([paths[k][s] for s in splits for k in ("stuff_json", "instances_json")],
                       "COCO-stuff annotation file")
    else:
        common.require([paths["raw_labels"][s] for s in splits], "stuffthingmaps directory")
    source = "json" if args.from_json else "stuffthingmaps"
    common.begin(paths["prepared"], [paths["labels"][s] for s in splits],
                 {"dataset": "coco_stuff", "source": source}, args.force)

    split_lists, counts = {}, {}
    for split in splits:
        out_dir = paths["labels"][split]
        if args.from_json:
            stems, tasks = json_tasks(paths["stuff_json"][split], paths["instances_json"][split], out_dir)
            fn = convert_json
        else:
            raw_dir = paths["raw_labels"][split]
            stems = sorted(os.path.splitext(n)[0] for n in os.listdir(raw_dir) if n.endswith(".png"))
            tasks = [(os.path.join(out_dir, s + ".png"), os.path.join(raw_dir, s + ".png")) for s in stems]
            fn = convert_png
        if not stems:
            where = paths["stuff_json" if args.from_json else "raw_labels"][split]
            raise FileNotFoundError(f"No labels of split {split!r} in {where}")
        common.check_images(paths["images"][split], stems)
        tasks = [t + (os.path.join(paths["images"][split], stem + ".jpg"),) for t, stem in zip(tasks, stems)]
        common.run_tasks(fn, tasks, args.workers, desc=f"coco_stuff {split}", options=vars(args), mapping=MAPPING)
        split_lists[paths["split_files"][split]] = stems
        counts[split] = len(stems)
    common.finish(paths["prepared"], split_lists, {"splits": counts})
    return counts


if __name__ == "__main__":
    common.cli(main)
