#!/usr/bin/env python
# Copyright (c) CaGNet-D2 contributors.
"""Prepare Pascal-Context (VOC 2010) for CaGNet-D2: ``pascal_context_33_*`` and
``pascal_context_60_zs3_*``.

  python datasets/prepare_pascal_context.py [--root $DETECTRON2_DATASETS] [--workers N]
                                            [--source auto|json|mat]

Input (under ROOT/VOCdevkit/VOC2010, see datasets/README.md): JPEGImages/*.jpg and either
  trainval_merged.json      the PASCAL in Detail annotation file used by the Detail API,
                            mmsegmentation and PyTorch-Encoding ("json"): per image its phase
                            (train / val) and COCO-style RLE masks whose category ids are the
                            full 459-class ids; decoded with pycocotools exactly as the Detail
                            API's getMask() does (masks drawn in file order), or
  trainval/*.mat            the original Pascal-Context release, trainval.tar.gz ("mat"):
                            one MATLAB file per image whose LabelMap holds 459-class ids,
  + ImageSets/Main/{train,val}.txt   (VOC 2010 lists: 4,998 / 5,105 ids; "mat" only).
"auto" (default) takes the JSON when it is there, else the .mat files.
Output: annotations_cagnet/{train,val}/*.png, the standard 59-class maps (0 = background:
unlabeled and every class outside the 59; 1..59 in alphabetical order), the split lists
{train,val}.txt and, last, the completion marker. A class id outside 0..459 is an error naming
the file (--invalid-labels ignore: mapped to 255 and counted); each image is decoded once and its
size compared with its label's.
"""
import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _prepare_common as common  # noqa: E402

from cagnet.data.catalog import PASCAL_CONTEXT_NUM_FULL_CLASSES, pascal_context_459_to_59_lut  # noqa: E402
from cagnet.data.datasets.register_pascal_context import pascal_context_paths  # noqa: E402
from cagnet.data.register import datasets_root  # noqa: E402

MAPPING = common.LabelMapping(
    pascal_context_459_to_59_lut(), range(PASCAL_CONTEXT_NUM_FULL_CLASSES + 1),
    f"Pascal-Context class ids are 0 (unlabeled) and 1..{PASCAL_CONTEXT_NUM_FULL_CLASSES} (the full release's "
    "labels.txt; cagnet.data.catalog.pascal_context_459_to_59_lut)",
    counted_value=0, counted_name="background (unlabeled and the classes outside the 59)",
)


def convert_mat(task, options):
    from scipy.io import loadmat

    dst, src, image = task
    try:
        raw = np.asarray(loadmat(src)["LabelMap"]).astype(np.int64)
    except Exception as e:
        raise common.PrepareInputError(f"{src}: cannot read its LabelMap ({type(e).__name__}: {e})") from e
    return common.convert_label(dst, raw, MAPPING, image, src, options)


def convert_json(task, options):
    dst, height, width, annotations, image = task
    raw = np.zeros((height, width), dtype=np.int64)
    for category_id, segmentation in annotations:
        raw[common.decode_segmentation(segmentation, height, width).astype(bool)] = category_id
    return common.convert_label(dst, raw, MAPPING, image, f"{dst} (from the JSON annotations)", options)


def json_tasks(path, labels):
    """{split: (stems, tasks)} from trainval_merged.json."""
    with open(path) as f:
        data = json.load(f)
    per_image = defaultdict(list)
    for ann in data["annos_segmentation"]:
        per_image[ann["image_id"]].append((ann["category_id"], ann["segmentation"]))
    out = {split: ([], []) for split in labels}
    for img in sorted(data["images"], key=lambda i: i["file_name"]):
        if img.get("phase") not in labels:
            continue
        stem = os.path.splitext(img["file_name"])[0]
        stems, tasks = out[img["phase"]]
        stems.append(stem)
        dst = os.path.join(labels[img["phase"]], stem + ".png")
        tasks.append((dst, img["height"], img["width"], per_image.get(img["image_id"], [])))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, datasets_root())
    parser.add_argument("--source", choices=("auto", "json", "mat"), default="auto",
                        help="raw labels: trainval_merged.json or trainval/*.mat (default: auto)")
    args = parser.parse_args(argv)
    paths = pascal_context_paths(args.root)
    splits = ("train", "val")

    source = args.source
    if source == "auto":
        if os.path.isfile(paths["json"]):
            source = "json"
        elif os.path.isdir(paths["mat_dir"]):
            source = "mat"
        else:
            raise FileNotFoundError(
                f"Pascal-Context labels not found: neither {paths['json']} nor {paths['mat_dir']} exists\n"
                + common.README_HINT
            )
    common.require([paths["images"]], "VOC 2010 image directory")
    if source == "json":
        common.require([paths["json"]], "Pascal-Context annotation file")
    else:
        common.require([paths["mat_dir"]], "Pascal-Context .mat label directory")
        common.require([paths["raw_split_files"][s] for s in splits], "VOC 2010 split list")
    common.begin(paths["prepared"], [paths["labels"][s] for s in splits],
                 {"dataset": "pascal_context", "source": source}, args.force)

    if source == "json":
        per_split = json_tasks(paths["json"], {s: paths["labels"][s] for s in splits})
        fn = convert_json
    else:
        per_split = {}
        for split in splits:
            stems = common.read_split_list(paths["raw_split_files"][split])
            sources = [os.path.join(paths["mat_dir"], s + ".mat") for s in stems]
            common.require(sources, f"Label of a {split} image listed in {paths['raw_split_files'][split]}")
            per_split[split] = (stems, [(os.path.join(paths["labels"][split], s + ".png"), src)
                                        for s, src in zip(stems, sources)])
        fn = convert_mat

    split_lists, counts = {}, {}
    for split in splits:
        stems, tasks = per_split[split]
        if not stems:
            raise ValueError(f"No {split} images in {paths['json'] if source == 'json' else paths['mat_dir']}")
        common.convert_split(fn, tasks, stems, paths["images"], args.workers, f"pascal_context {split}",
                             options=vars(args), mapping=MAPPING)
        split_lists[paths["split_files"][split]] = stems
        counts[split] = len(stems)
    common.finish(paths["prepared"], split_lists, {"splits": counts})
    return counts


if __name__ == "__main__":
    common.cli(main)
