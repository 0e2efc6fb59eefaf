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
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "pascal_voc", "cagnet_R101_os8_bs8_crop368_46k_voc20.yaml")
SOURCE_CLASSES = 64


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


# ---------------------------------------------------------------------- the stand-in pretrained trunk
def source_batch(n: int, size: int, rng: np.random.Generator, num_classes: int = SOURCE_CLASSES):
    """Images (n, 3, size, size) in [0, 255] and pixel labels (n, size, size) of the generated
    pretraining source: Voronoi regions, each of a class = (colour, stripe orientation, period)."""
    palette = np.random.default_rng(12345).uniform(30, 225, size=(num_classes, 3))
    angles = (np.arange(num_classes) % 4) * (np.pi / 4)
    periods = np.where((np.arange(num_classes) // 4) % 2, 4.0, 8.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images, labels = np.zeros((n, 3, size, size), np.float32), np.zeros((n, size, size), np.int64)
    for i in range(n):
        k = int(rng.integers(2, 6))
        cy, cx = rng.uniform(0, size, k), rng.uniform(0, size, k)
        region = np.argmin((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2, axis=-1)
        cls = rng.integers(0, num_classes, k)[region]
        stripes = np.sin(2 * np.pi * (xx * np.cos(angles[cls]) + yy * np.sin(angles[cls])) / periods[cls])
        img = palette[cls] * (0.75 + 0.25 * stripes)[..., None] + rng.normal(0, 12, (size, size, 3))
        images[i] = np.clip(img, 0, 255).transpose(2, 0, 1)
        labels[i] = cls
    return torch.from_numpy(images), torch.from_numpy(labels)


def stand_in_pretrained_trunk(config_file: str, path: str, *, device: str = "cpu", opts=(), iters: int = 150,
                              batch: int = 4, size: int = 64, tiny: bool = False, log=print) -> str:
    """Train (or reuse) the stand-in pretrained trunk of ``config_file`` (+ ``opts``) and save it
    at ``path`` as a checkpoint that MODEL.WEIGHTS loads (the trunk's keys only); returns ``path``."""
    from cagnet.engine import CaGNetTrainer
    from cagnet.engine.precision import MixedPrecision, resolve_precision
    from cagnet.utils.cli import load_config

    cfg = load_config(config_file, ["MODEL.DEVICE", device, "DATASETS.TRAIN", ("synthetic_scenes_train",),
                                    "DATASETS.TEST", (), *opts])
    tag = f"{os.path.basename(config_file)} {' '.join(map(str, opts))} iters={iters} batch={batch} size={size}"
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("stand_in") == tag:
            log(f"stand-in pretrained trunk: {path} (cached)")
            return path
    if tiny:
        iters, batch, size = 3, 2, 32
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = CaGNetTrainer.build_model(cfg)
    trunk = model.backbone.resnet
    feature = trunk._out_features[-1]
    head = nn.Conv2d(trunk.output_shape()[feature].channels, SOURCE_CLASSES, 1).to(model.device)
    params = [p for p in trunk.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    mp = MixedPrecision(resolve_precision(True, "auto", model.device))
    mean, std = model.pixel_mean, model.pixel_std
    start, first = time.perf_counter(), None
    trunk.train()
    for it in range(iters):
        images, labels = source_batch(batch, size, rng)
        x = ((images.to(model.device) - mean) / std).contiguous(memory_format=torch.channels_last)
        with mp.autocast():
            logits = head(trunk(x)[feature])
        target = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest-exact")[:, 0].long()
        loss = F.cross_entropy(logits.float(), target.to(model.device))
        optimizer.zero_grad(set_to_none=True)
        mp.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        mp.step(optimizer)
        mp.update()
        value = loss.item()
        first = first if first is not None else value
        if it % 25 == 0 or it == iters - 1:
            acc = float((logits.argmax(1) == target.to(model.device)).float().mean())
            log(f"  stand-in pretraining {it + 1}/{iters}: CE {value:.3f} (start {first:.3f}), pixel accuracy "
                f"{acc:.2f}, {time.perf_counter() - start:.0f} s")
    state = {f"backbone.resnet.{k}": v.detach().cpu() for k, v in trunk.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": state, "stand_in": tag}, path + ".tmp")
    os.replace(path + ".tmp", path)
    log(f"stand-in pretrained trunk: {path} ({iters} iterations of {batch} x {size} px, {SOURCE_CLASSES} source "
        f"classes, {time.perf_counter() - start:.0f} s)")
    return path


# ---------------------------------------------------------------------- the check
class FeatureRecorder:
    """Per forward of CM in training: mean |x| and the mean per-channel std of X."""

    def __init__(self, model):
        self.rows = []
        model.contextual_module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        if module.training:
            x = out.x.detach().float()
            self.rows.append((float(x.abs().mean()), float(x.transpose(0, 1).flatten(1).std(dim=1).mean())))


def gradient_norms_into_e(trainer, batch):
    """|d(term)/d(E's parameters)| of CE, lambda1 L_REC and lambda2 L_KL on one batch (at the
    trainer's current weights; nothing is stepped)."""
    model = trainer.model
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    with trainer._trainer.mixed_precision.autocast():
        feats = model.extract_features(batch)
        losses = model.training_losses(feats)
    out = {}
    for name in ("loss_cls", "loss_rec", "loss_kl"):
        grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        out[name] = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
    return out, {k: float(v) for k, v in losses.items()}


def main(argv=None):
    args = parse_args(argv)
    from cagnet.engine.cpu_allocator import tune_cpu_allocator

    tune_cpu_allocator()
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    from detectron2.utils.logger import setup_logger

    from cagnet.engine import CaGNetTrainer
    from cagnet.utils.cli import load_config

    setup_logger(name="cagnet")
    os.makedirs(args.output, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = load_config(args.config_file, list(args.opts))
    weights = "" if args.random_init else probe.MODEL.WEIGHTS or stand_in_pretrained_trunk(
        args.config_file, os.path.join(args.output, "stand_in_trunk.pth"), device=device, iters=args.pretrain_iters)
    training_only = args.iters - args.finetune_iters
    cfg = load_config(args.config_file, [
        "MODEL.DEVICE", device,
        "DATASETS.TRAIN", ("synthetic_scenes_train",), "DATASETS.TEST", (),
        "INPUT.CROP.SIZE", (args.crop, args.crop), "SOLVER.IMS_PER_BATCH", args.batch,
        "SOLVER.MAX_ITER", args.iters, "SOLVER.PHASES.TRAINING_ONLY_ITERS", training_only,
        "SOLVER.PHASES.TRAINING_BLOCK", 20, "SOLVER.PHASES.FINETUNING_BLOCK", 20,
        # The first few hundred of the config's 46k-50k iteration poly schedule stay within 1% of
        # the base LR: a constant LR is what they see (a poly schedule over --iters would not).
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.CHECKPOINT_PERIOD", 10**6, "TEST.EVAL_PERIOD", 0, "DATALOADER.NUM_WORKERS", 1,
        "OUTPUT_DIR", os.path.join(args.output, "run"), "SEED", 0,
        *args.opts, "MODEL.WEIGHTS", weights,
    ])
    c = cfg.MODEL.CAGNET
    print(f"config: {os.path.relpath(args.config_file, REPO)} ({cfg.MODEL.RESNETS.DEPTH} layers, l = "
          f"{cfg.MODEL.ASPP_L.OUT_CHANNELS}); REC: {c.REC_LOSS}, REC_NORMALIZATION {c.REC_NORMALIZATION}, "
          f"DETACH_REC_TARGET {c.DETACH_REC_TARGET}, CONTEXTUAL_MODULE.DETACH_INPUT "
          f"{cfg.MODEL.CONTEXTUAL_MODULE.DETACH_INPUT}, lambda1 {c.REC_WEIGHT}, lambda2 {c.KL_WEIGHT}; "
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
    ce = values.get("loss_cls", [])
    kl = values.get("loss_kl", [])
    x_abs = [r[0] for r in recorder.rows]
    x_std = [r[1] for r in recorder.rows]
    print(f"\n{len(recorder.rows)} training steps, {len(values.get('loss_cls_generated', []))} finetuning steps "
          f"in {wall:.0f} s ({wall / max(args.iters, 1):.2f} s / iteration)")
    rec, kl_w = values.get("loss_rec", []), values.get("loss_kl", [])
    print("training step:  " + " ".join(f"{i:>7d}" for i in range(0, len(ce), 10)))
    for label, series in (("loss_cls", ce), ("loss_rec", rec), ("loss_kl", kl_w), ("X mean |x|", x_abs),
                          ("X channel std", x_std)):
        print(f"{label:15s} " + " ".join(f"{np.mean(series[i:i + 10]):7.3g}" for i in range(0, len(series), 10)))
    for name in sorted(values):
        v = values[name]
        print(f"  {name:22s} first {v[0]:10.4g}  max {max(v):10.4g}  last {v[-1]:10.4g}  finite {all(map(math.isfinite, v))}")
    checks = []
    if failure:
        checks.append((False, failure))
    finite = failure is None and all(math.isfinite(x) for v in values.values() for x in v)
    checks.append((finite, "every loss finite"))
    if len(ce) >= 15:
        a, b = float(np.mean(ce[:5])), float(np.mean(ce[-10:]))
        checks.append((b < args.ce_drop * a, f"CE falls: first 5 steps {a:.3f}, last 10 {b:.3f} (< {args.ce_drop} x)"))
    else:
        checks.append((False, f"CE falls: only {len(ce)} training steps"))
    if x_abs:
        for label, series in (("mean |x|", x_abs), ("per-channel std of x", x_std)):
            lo, hi = min(series) / series[0], max(series) / series[0]
            ok = 1 / args.feature_factor <= lo and hi <= args.feature_factor
            checks.append((ok, f"X {label}: start {series[0]:.3g}, range x{lo:.2f} .. x{hi:.2f} of the start, "
                               f"last {series[-1]:.3g} (within x{args.feature_factor})"))
    if kl:
        raw = [v / cfg.MODEL.CAGNET.KL_WEIGHT for v in kl]
        last = float(np.mean(raw[-10:]))
        checks.append((last <= args.max_kl, f"KL of the latent code, nats per element: start {raw[0]:.3g}, max "
                                           f"{max(raw):.3g}, last 10 steps {last:.3g} (<= {args.max_kl})"))
    print()
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}")
    passed = all(ok for ok, _ in checks)
    print(f"\ncheck_paper_config: {'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
