#!/usr/bin/env python
"""Pretrain a config's backbone trunk on the generated pretraining source (the stand-in for
ImageNet; see cagnet/engine/backbone_pretraining.py for what the source contains) and write it
as a detectron2 model-zoo .pkl that MODEL.WEIGHTS loads like R-101.pkl.

  python dev/pretrain_backbone.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \\
      --output projects/CaGNet/cagnet/data/pretrained/synthetic_scenes_tiny_trunk.pkl

Training logs, TensorBoard events and checkpoints go to OUTPUT_DIR (default
output/pretrain/<config name>); --resume continues an interrupted run there. PRETRAIN.* keys
(config.py) set the source and the schedule.
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

from cagnet.data import synthetic_scenes as scenes
from cagnet.engine.backbone_pretraining import BackbonePretrainer, export_trunk
from cagnet.engine.cpu_allocator import tune_cpu_allocator
from cagnet.utils.cli import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the config whose MODEL.RESNETS / DILATED_RESNET trunk is pretrained")
    p.add_argument("--output", required=True, help="the .pkl to write")
    p.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def nearest_source_looks(source_looks):
    """Per built-in class, the distance of the nearest source look (and the typical distance
    between two built-in classes, for scale)."""
    world = [scenes.look_vector(lk) for lk in scenes.world_looks()]
    src = [scenes.look_vector(lk) for lk in source_looks]
    out = {}
    for name, lk, v in zip(scenes.CLASS_NAMES, scenes.world_looks(), world):
        same_kind = [s for s, sl in zip(src, source_looks) if sl.kind == lk.kind]
        out[name] = float(min(np.linalg.norm(v - s) for s in same_kind))
    between = [np.linalg.norm(a - b) for i, a in enumerate(world) for b in world[i + 1:]]
    return out, float(np.median(between))


def main(argv=None):
    args = parse_args(argv)
    tune_cpu_allocator()
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    stem = os.path.splitext(os.path.basename(args.config_file))[0]
    cfg = load_config(args.config_file, ["OUTPUT_DIR", os.path.join("output", "pretrain", stem), *args.opts], freeze=False)
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file=args.config_file, eval_only=False, opts=args.opts))
    logger = setup_logger(output=cfg.OUTPUT_DIR, name="cagnet")
    start = time.perf_counter()
    trainer = BackbonePretrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    storage = trainer.storage
    final = {k: float(v.median(50)) for k, v in storage.histories().items() if k in ("loss_cls", "pixel_accuracy")}
    nearest, between = nearest_source_looks(trainer._trainer.source.looks)
    provenance = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "dev/pretrain_backbone.py"] + sys.argv[1:]),
        "config_file": os.path.relpath(os.path.abspath(args.config_file), REPO),
        "pretrain": json.loads(json.dumps(dict(cfg.PRETRAIN))),
        "renderer_version": scenes.VERSION,
        "final_median_of_50": final,
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    export_trunk(trainer.model, args.output, provenance)
    with open(args.output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    logger.info(f"Wrote {args.output} (sha256 {digest[:16]}...): {json.dumps(provenance)}")
    print(json.dumps({"output": args.output, "sha256": digest, **provenance}, indent=1))
    print("Nearest source look to each built-in class (look-vector distance; median distance between two "
          f"built-in classes: {between:.2f}):")
    print("  " + ", ".join(f"{n} {d:.2f}" for n, d in nearest.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
