#!/usr/bin/env python
# Copyright (c) CaGNet-D2 contributors.
"""Prepare Pascal-VOC 2012 + SBD for CaGNet-D2: ``pascal_voc_20_*`` and ``pascal_voc_21_zs3_*``.

  python datasets/prepare_pascal_voc.py [--root $DETECTRON2_DATASETS] [--workers N]

Input (under ROOT/VOCdevkit/VOC2012, see datasets/README.md):
  JPEGImages/*.jpg
  SegmentationClassAug/*.png              SBD-augmented labels (grayscale, or palette PNGs)
  SegmentationClass/*.png                 VOC 2012 palette PNGs (palette index = class value)
  ImageSets/Segmentation/train_aug.txt    10,582 training ids (ids, or DeepLab's
                                          "/JPEGImages/X.jpg /SegmentationClassAug/X.png" lines)
  ImageSets/Segmentation/val.txt          1,449 validation ids (VOC 2012)
Output: annotations_cagnet/{train,val}/*.png (grayscale: 0 background, 1..20 classes, 255
boundary / ignore), the split lists {train,val}.txt and, last, the completion marker. Both
settings read these files through their own lookup table. A raw value other than 0..20 and 255
is an error naming the file (--invalid-labels ignore: mapped to 255 and counted); each image is
decoded once and its size compared with its label's.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _prepare_common as common  # noqa: E402

from cagnet.data.catalog import pascal_voc_raw_lut  # noqa: E402
from cagnet.data.datasets.register_pascal_voc import pascal_voc_paths  # noqa: E402
from cagnet.data.register import datasets_root  # noqa: E402

MAPPING = common.LabelMapping(
    pascal_voc_raw_lut(), [*range(21), 255],
    "Pascal-VOC label values are 0 (background), 1..20 (the classes) and 255 (boundary, ignore) "
    "(cagnet.data.catalog.pascal_voc_raw_lut)",
)


def convert(task, options):
    dst, src, image = task
    return common.convert_label(dst, common.read_label_png(src), MAPPING, image, src, options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, datasets_root())
    args = parser.parse_args(argv)
    paths = pascal_voc_paths(args.root)
    splits = ("train", "val")

    common.require([paths["images"]], "VOC 2012 image directory")
    common.require([paths["raw_labels"][s] for s in splits], "VOC label directory")
    common.require([paths["raw_split_files"][s] for s in splits], "VOC split list")
    common.begin(paths["prepared"], [paths["labels"][s] for s in splits],
                 {"dataset": "pascal_voc", "source": "SegmentationClassAug+SegmentationClass"}, args.force)

    split_lists, counts = {}, {}
    for split in splits:
        stems = common.read_split_list(paths["raw_split_files"][split])
        raw_dir, out_dir = paths["raw_labels"][split], paths["labels"][split]
        sources = [os.path.join(raw_dir, s + ".png") for s in stems]
        common.require(sources, f"Label of a {split} image listed in {paths['raw_split_files'][split]}")
        tasks = [(os.path.join(out_dir, s + ".png"), src) for s, src in zip(stems, sources)]
        common.convert_split(convert, tasks, stems, paths["images"], args.workers, f"pascal_voc {split}",
                             options=vars(args), mapping=MAPPING)
        split_lists[paths["split_files"][split]] = stems
        counts[split] = len(stems)
    common.finish(paths["prepared"], split_lists, {"splits": counts})
    return counts


if __name__ == "__main__":
    common.cli(main)
