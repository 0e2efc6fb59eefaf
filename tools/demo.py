#!/usr/bin/env python
"""Segment images with a trained model and write overlay PNGs with class names.

  python tools/demo.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \
      --input 'datasets/synthetic_scenes/images/val/*.jpg' --output output/demo/vis \
      MODEL.WEIGHTS output/demo/model_final.pth

--input takes files, directories (their images) and glob patterns. Each image gives
OUTPUT/<stem>.png (the overlay, drawn by detectron2's Visualizer with the model's class names,
unseen classes marked with "*", and a legend of the classes present with their share of the
image) and OUTPUT/<stem>.json (that legend, machine-readable). The class list is the
checkpoint's own (so classes added by tools/add_classes.py appear). An image that cannot be read
is reported with its path and skipped (OUTPUT/demo_summary.json lists what was written and
skipped); the exit status is 0 when at least one image was written. Put KEY VALUE overrides last;
TEST.AUG.ENABLED True segments with multi-scale / flip test-time augmentation (TEST.AUG.MIN_SIZES,
MAX_SIZE, FLIP; logits averaged).
"""
import argparse
import glob
import json
import os
import sys

import cv2
import numpy as np
import torch
import tqdm

from detectron2.data import detection_utils as utils

from cagnet.modeling import SemanticSegmentorWithTTA, build_model_from_checkpoint
from cagnet.utils.cli import load_config, run_main, setup_logging
from cagnet.visualization.drawing import render_segmentation

SUMMARY_FILE = "demo_summary.json"  # {"written": [png, ...], "skipped": [{"input", "error"}, ...]}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="image files, directories or glob patterns")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--confidence", type=float, default=0.0,
                   help="leave pixels whose top class probability is below this undrawn (default 0: all)")
    p.add_argument("--scale", type=float, default=0.0,
                   help="overlay size relative to the image (default: so that the longer side is ~480 px)")
    p.add_argument("--alpha", type=float, default=0.6, help="opacity of the class colours")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS W")
    return p.parse_args(argv)


def expand_inputs(patterns):
    """Files in the order given; directories give their images (sorted), patterns their matches."""
    paths = []
    for item in patterns:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in item for c in "*?["):
            paths += sorted(glob.glob(os.path.expanduser(item)))
        else:
            paths.append(item)  # a missing file is reported when it is read
    return list(dict.fromkeys(paths))


def output_stems(paths):
    """A unique output name per input (the file stem, suffixed when two inputs share it)."""
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


@torch.no_grad()
def predict(model, image: np.ndarray, confidence: float = 0.0) -> np.ndarray:
    """(H, W) class indices of an image in the model's input format; 255 below ``confidence``."""
    # uint8, as the test loader gives it: test-time augmentation then resizes exactly as in evaluation
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    logits = model([{"image": tensor}])[0]["sem_seg"]
    prob, pred = logits.softmax(dim=0).max(dim=0)
    pred[prob < confidence] = 255
    return pred.cpu().numpy()


def to_rgb(image: np.ndarray, input_format: str) -> np.ndarray:
    return utils.convert_image_to_rgb(image, input_format).astype(np.uint8)


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = setup_logging("cagnet.demo")
    cfg = load_config(args.config_file, args.opts)
    model = build_model_from_checkpoint(cfg, cfg.MODEL.WEIGHTS)
    if cfg.TEST.AUG.ENABLED:
        logger.info(f"Test-time augmentation: short sides {list(cfg.TEST.AUG.MIN_SIZES)}, flip {cfg.TEST.AUG.FLIP}")
        model = SemanticSegmentorWithTTA(cfg, model)
    names = list(model.class_names or [str(i) for i in range(model.num_classes)])
    unseen = model.unseen_ids.tolist()
    paths = expand_inputs(args.input)
    if not paths:
        logger.error(f"No images match {args.input}")
        return 1
    os.makedirs(args.output, exist_ok=True)
    written, failed = [], []
    for path, stem in zip(tqdm.tqdm(paths, desc="demo", unit="image", file=sys.stderr), output_stems(paths)):
        try:
            image = utils.read_image(path, format=cfg.INPUT.FORMAT)
        except Exception as e:  # unreadable or missing: report and go on
            logger.warning(f"Skipping {path}: cannot read it as an image ({type(e).__name__}: {e})")
            failed.append({"input": os.path.abspath(path), "error": f"{type(e).__name__}: {e}"})
            continue
        pred = predict(model, image, args.confidence)
        scale = args.scale or max(1.0, 480.0 / max(image.shape[:2]))
        canvas, legend = render_segmentation(to_rgb(image, cfg.INPUT.FORMAT), pred, names, unseen, scale, args.alpha)
        png = os.path.join(args.output, stem + ".png")
        if not cv2.imwrite(png, canvas[:, :, ::-1]):
            raise OSError(f"Cannot write {png}")
        record = {
            "input": os.path.abspath(path),
            "output": os.path.abspath(png),
            "image_size": list(image.shape[:2]),
            "output_size": list(canvas.shape[:2]),
            "scale": scale,
            "confidence": args.confidence,
            "legend": legend,
            "class_names": names,
            "unseen_class_ids": unseen,
        }
        with open(os.path.join(args.output, stem + ".json"), "w") as f:
            json.dump(record, f, indent=1)
        written.append(os.path.abspath(png))
    with open(os.path.join(args.output, SUMMARY_FILE), "w") as f:
        json.dump({"written": written, "skipped": failed}, f, indent=1)
    logger.info(f"Wrote {len(written)} overlays to {args.output}"
                + (f"; skipped {len(failed)} unreadable: {[x['input'] for x in failed]}" if failed else ""))
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
