#!/usr/bin/env python
"""Draw what CM and G compute for one image: the context scale map (paper Fig. 6) and the
reconstruction-error maps of G (paper Fig. 5).

  python tools/visualize_features.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \
      --input datasets/synthetic_scenes/images/val/val_000000.jpg --output output/demo/features \
      MODEL.WEIGHTS output/demo/model_final.pth

Writes OUTPUT/<stem>_scales.png (input | which of the three dilated context scales the context
selector weighs highest at each pixel, with a legend) and OUTPUT/<stem>_reconstruction.png
(input | ||G(mu, w_c) - x||^2 | ||G(z, w_c) - x||^2 with z ~ N(0, I), on one colour scale), each
with a JSON file of the numbers shown. w_c is the embedding of the pixel's predicted class, or of
its ground-truth class with --label (a label PNG of --label-dataset, default the config's test
set; its values are mapped to the model's classes by name, so a model with added classes works;
ignored pixels are drawn grey). The numbers come from cagnet.visualization.feature_maps; this tool only
draws.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch

from detectron2.data import detection_utils as utils

from cagnet.vocabulary.class_names import labels_to_model_classes
from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config, run_main, setup_logging
from cagnet.visualization.feature_maps import compute_feature_maps
from cagnet.visualization.drawing import render_reconstruction_error, render_scale_map


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", required=True, help="one image")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--label", help="label PNG of the image (default: w_c of the predicted class)")
    p.add_argument("--label-dataset", help="dataset whose label files --label follows, to map its values to the "
                   "model's classes by name (default: the config's first test dataset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random latent code")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS W")
    return p.parse_args(argv)


def _write(path_png: str, rgb: np.ndarray, info) -> None:
    if not cv2.imwrite(path_png, rgb[:, :, ::-1]):
        raise OSError(f"Cannot write {path_png}")
    with open(os.path.splitext(path_png)[0] + ".json", "w") as f:
        json.dump(info, f, indent=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = setup_logging("cagnet.visualize_features")
    cfg = load_config(args.config_file, args.opts)
    model = build_model_from_checkpoint(cfg, cfg.MODEL.WEIGHTS)
    image = utils.read_image(args.input, format=cfg.INPUT.FORMAT)
    label = None
    if args.label:
        values = utils.read_image(args.label)
        values = values[..., 0] if values.ndim == 3 else values
        dataset = args.label_dataset or (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
        label = torch.as_tensor(labels_to_model_classes(values, dataset, model.class_names, model.ignore_value))
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    maps = compute_feature_maps(model, tensor, label, seed=args.seed)
    rgb = utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT).astype(np.uint8)
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.input))[0]

    picture, legend = render_scale_map(rgb, maps, dpi=args.dpi)
    scales_png = os.path.join(args.output, f"{stem}_scales.png")
    _write(scales_png, picture, {"input": os.path.abspath(args.input), "output_size": list(picture.shape[:2]),
                                 "legend": legend})
    picture, summary = render_reconstruction_error(rgb, maps, model.class_names, dpi=args.dpi)
    rec_png = os.path.join(args.output, f"{stem}_reconstruction.png")
    _write(rec_png, picture, {"input": os.path.abspath(args.input), "output_size": list(picture.shape[:2]),
                              **summary})
    logger.info(
        f"Wrote {scales_png} and {rec_png}: winning scales "
        + ", ".join(f"d={e['dilation']} {100 * e['fraction']:.0f}%" for e in legend)
        + f"; mean reconstruction error {summary['mean_error_mu']} (z = mu) vs "
        f"{summary['mean_error_random']} (z ~ N(0, I))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
