#!/usr/bin/env python
"""Does a paper config train stably at full ResNet-101 depth from a pretrained start? A check that
prints its figures (not a unit test: a few minutes on 2 CPU cores).

  python dev/check_paper_config.py                           # the VOC paper config, 200 iterations, crop 64
  python dev/check_paper_config.py --config-file configs/coco_stuff/cagnet_R101_os8_bs8_crop368_46k_cocostuff171.yaml \\
      MODEL.WEIGHTS /path/to/pretrained.pkl                    # a real pretrained trunk instead of the stand-in

The config's model, losses and optimisation are kept (ResNet-101 os8, ASPP-L 600, lambda1 10,
lambda2 100, SGD lr 2.5e-4 with ASPP x10, Adam for D, its REC target and normalisation, its
precision); only the data, the crop, the batch and the schedule change: the built-in dataset
(``synthetic_scenes_train``: its 20 classes and embeddings, no preparation needed) at --crop px,
--batch images, --iters iterations of which the last --finetune-iters alternate training and
finetuning blocks of 20, at the config's base LRs held constant (the first iterations of its 46k
poly schedule).

Pretrained start: MODEL.WEIGHTS when given (e.g. ``dev/pretrain_backbone.py``'s .pkl, or
detectron2's R-101.pkl). Otherwise a stand-in, because no ImageNet weights can be had here: the
config's ResNet-101 trunk trained for --pretrain-iters steps (SGD, 1x1 head on res5) to label the
pixels of a generated source with 64 classes (a class is a colour and a stripe texture, regions of
Voronoi cells with noise; it shares no class with the built-in dataset, just as a pretraining set
is not the target set). It gives what the check is about -- a trunk whose features already
respond to colour and texture, at the activation scale that training gives, rather than the
identity-initialised random trunk -- cheaply (cached in OUTPUT_DIR/stand_in_trunk.pth); it is
not ImageNet and says nothing about accuracy.

Asserts, and prints: every loss finite at every iteration; CE falling (mean of the last 10
training steps below --ce-drop times the mean of the first 5); the features neither collapsing
nor blowing up (CM's output X: mean |x| and mean per-channel std over the batch stay within a
factor --feature-factor of the first iteration's); the latent code staying near the prior that
the finetuning step samples from (KL per latent element, unweighted, over the last 10 training
steps at most --max-kl nats). It prints the trajectories every 10 training steps and, at
iteration 0, the gradient norm that CE, lambda1 L_REC and lambda2 L_KL each send into E, the
balance that the REC target and normalisation decide. Exit status 1 when an assertion fails.

The logic is in ``cagnet.analysis.paper_config_check`` (tested in tests/test_analysis.py).
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "pascal_voc", "cagnet_R101_os8_bs8_crop368_46k_voc20.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--iters", type=int, default=200, help="iterations in all (>= 100 for the check)")
    p.add_argument("--finetune-iters", type=int, default=60, help="of which the last ones alternate 20/20 blocks")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--pretrain-iters", type=int, default=150)
    p.add_argument("--random-init", action="store_true", help="no pretrained start (to see what it changes)")
    p.add_argument("--ce-drop", type=float, default=0.8)
    p.add_argument("--feature-factor", type=float, default=3.0)
    p.add_argument("--max-kl", type=float, default=0.5, help="nats per latent element")
    p.add_argument("--output", default=os.path.join(REPO, "output", "check_paper_config"))
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from cagnet.engine.cpu_allocator import tune_cpu_allocator

    tune_cpu_allocator()
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    from detectron2.utils.logger import setup_logger

    from cagnet.analysis.paper_config_check import (
        FeatureRecorder, check_overrides, gradient_norms_into_e, stability_checks, stand_in_pretrained_trunk,
    )
    from cagnet.engine import CaGNetTrainer
    from cagnet.utils.cli import load_config

    setup_logger(name="cagnet")
    os.makedirs(args.output, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = load_config(args.config_file, list(args.opts))
    weights = "" if args.random_init else probe.MODEL.WEIGHTS or stand_in_pretrained_trunk(
        args.config_file, os.path.join(args.output, "stand_in_trunk.pth"), device=device, iters=args.pretrain_iters)
    training_only = args.iters - args.finetune_iters
    cfg = load_config(args.config_file, check_overrides(
        device=device, crop=args.crop, batch=args.batch, iters=args.iters, finetune_iters=args.finetune_iters,
        output_dir=os.path.join(args.output, "run"), weights=weights, opts=args.opts))
    c = cfg.MODEL.CAGNET
    print(f"config: {os.path.relpath(args.config_file, REPO)} ({cfg.MODEL.RESNETS.DEPTH} layers, l = "
          f"{cfg.MODEL.ASPP_L.OUT_CHANNELS}); REC: {c.REC_LOSS}, REC_NORMALIZATION {c.REC_NORMALIZATION}, "
          f"DETACH_REC_TARGET {c.DETACH_REC_TARGET}, CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT "
          f"{cfg.MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT}, lambda1 {c.REC_WEIGHT}, lambda2 {c.KL_WEIGHT}; "
          f"MODEL.WEIGHTS {weights}")
    print(f"data: synthetic_scenes_train, crop {args.crop}, batch {args.batch}; {args.iters} iterations "
          f"({training_only} training steps, then 20/20 training/finetuning blocks)", flush=True)
    torch.manual_seed(0)
    trainer = CaGNetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    recorder = FeatureRecorder(trainer.model)
    batch = next(iter(trainer._trainer._data_loader_factory(12345, 0)))
    grads, losses0 = gradient_norms_into_e(trainer, batch)
    recorder.rows.clear()
    print("iteration 0, gradient norm into E: " + ", ".join(
        f"{k} {v:.3g}" for k, v in grads.items()) + f" (REC / CE = {grads['loss_rec'] / max(grads['loss_cls'], 1e-12):.3g})")
    start = time.perf_counter()
    failure = None
    try:
        trainer.train()
    except FloatingPointError as e:  # detectron2 (or the non-finite guard) stopped the run
        failure = f"non-finite loss: {e}"
    wall = time.perf_counter() - start
    hist = trainer.storage.histories()
    values = {k: [v for v, _ in h.values()] for k, h in hist.items() if k.startswith("loss_")}
    ce, rec, kl = (values.get(k, []) for k in ("loss_cls", "loss_rec", "loss_kl"))
    x_abs = [r[0] for r in recorder.rows]
    x_std = [r[1] for r in recorder.rows]
    print(f"\n{len(recorder.rows)} training steps, {len(values.get('loss_cls_generated', []))} finetuning steps "
          f"in {wall:.0f} s ({wall / max(args.iters, 1):.2f} s / iteration)")
    print("training step:  " + " ".join(f"{i:>7d}" for i in range(0, len(ce), 10)))
    for label, series in (("loss_cls", ce), ("loss_rec", rec), ("loss_kl", kl), ("X mean |x|", x_abs),
                          ("X channel std", x_std)):
        print(f"{label:15s} " + " ".join(f"{np.mean(series[i:i + 10]):7.3g}" for i in range(0, len(series), 10)))
    for name in sorted(values):
        v = values[name]
        print(f"  {name:22s} first {v[0]:10.4g}  max {max(v):10.4g}  last {v[-1]:10.4g}  finite {all(map(math.isfinite, v))}")
    checks = stability_checks(values, recorder.rows, cfg.MODEL.CAGNET.KL_WEIGHT, ce_drop=args.ce_drop,
                              feature_factor=args.feature_factor, max_kl=args.max_kl, failure=failure)
    print()
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}")
    passed = all(ok for ok, _ in checks)
    print(f"\ncheck_paper_config: {'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
