# Copyright (c) CaGNet-D2 contributors.
"""Does a paper config train stably at full depth from a pretrained start? The logic of
``dev/check_paper_config.py`` (``make check-paper-config``) and of ``dev/gpu_check.py``'s
pretrained start.

* :func:`stand_in_pretrained_trunk`: the config's trunk trained to label the pixels of a generated
  source (:func:`source_batch`: 64 classes, each a colour and a stripe texture, on Voronoi regions),
  saved as a checkpoint that MODEL.WEIGHTS loads: the stand-in for ImageNet weights;
* :func:`check_overrides`: the config overrides of the check (built-in data, crop, batch, a
  constant LR, training-only steps then 20/20 blocks);
* :class:`FeatureRecorder` and :func:`gradient_norms_into_e`: what the check records;
* :func:`stability_checks`: the assertions on the recorded series, as (passed, text) rows.
"""
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SOURCE_CLASSES", "source_batch", "stand_in_pretrained_trunk", "check_overrides", "FeatureRecorder",
           "gradient_norms_into_e", "stability_checks"]

SOURCE_CLASSES = 64


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
    from ..engine import CaGNetTrainer
    from ..engine.precision import MixedPrecision, resolve_precision
    from ..utils.cli import load_config

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
def check_overrides(*, device: str, crop: int, batch: int, iters: int, finetune_iters: int, output_dir: str,
                    weights: str, opts: Sequence = ()) -> List:
    """KEY VALUE overrides of the check: the built-in training set at ``crop`` px and ``batch``
    images, ``iters`` iterations of which the last ``finetune_iters`` alternate training and
    finetuning blocks of 20, the config's base LRs held constant; ``opts`` after them and
    MODEL.WEIGHTS ``weights`` last."""
    return [
        "MODEL.DEVICE", device,
        "DATASETS.TRAIN", ("synthetic_scenes_train",), "DATASETS.TEST", (),
        "INPUT.CROP.SIZE", (crop, crop), "SOLVER.IMS_PER_BATCH", batch,
        "SOLVER.MAX_ITER", iters, "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", iters - finetune_iters,
        "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", 20, "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", 20,
        # The first few hundred of the config's 46k-50k iteration poly schedule stay within 1% of
        # the base LR: a constant LR is what they see (a poly schedule over ``iters`` would not).
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.CHECKPOINT_PERIOD", 10**6, "TEST.EVAL_PERIOD", 0, "DATALOADER.NUM_WORKERS", 1,
        "OUTPUT_DIR", output_dir, "SEED", 0,
        *opts, "MODEL.WEIGHTS", weights,
    ]


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


def stability_checks(losses: Dict[str, List[float]], features: Sequence[Tuple[float, float]], kl_weight: float, *,
                     ce_drop: float = 0.8, feature_factor: float = 3.0, max_kl: float = 0.5,
                     failure: Optional[str] = None) -> List[Tuple[bool, str]]:
    """The check's assertions, as (passed, text) rows: ``failure`` (a run stopped by a non-finite
    loss) fails; every loss in ``losses`` (name -> value per logged iteration) finite; CE
    (``loss_cls``, training steps) falling: the mean of the last 10 below ``ce_drop`` times the
    mean of the first 5 (at least 15 steps); CM's output X (``features``: (mean |x|, mean
    per-channel std) per training step) within a factor ``feature_factor`` of its first step, both
    ways; the KL per latent element (``loss_kl`` / ``kl_weight``) over the last 10 training steps
    at most ``max_kl`` nats."""
    checks = []
    if failure:
        checks.append((False, failure))
    finite = failure is None and all(math.isfinite(x) for v in losses.values() for x in v)
    checks.append((finite, "every loss finite"))
    ce, kl = losses.get("loss_cls", []), losses.get("loss_kl", [])
    if len(ce) >= 15:
        a, b = float(np.mean(ce[:5])), float(np.mean(ce[-10:]))
        checks.append((b < ce_drop * a, f"CE falls: first 5 steps {a:.3f}, last 10 {b:.3f} (< {ce_drop} x)"))
    else:
        checks.append((False, f"CE falls: only {len(ce)} training steps"))
    if features:
        for i, label in enumerate(("mean |x|", "per-channel std of x")):
            series = [row[i] for row in features]
            lo, hi = min(series) / series[0], max(series) / series[0]
            ok = 1 / feature_factor <= lo and hi <= feature_factor
            checks.append((ok, f"X {label}: start {series[0]:.3g}, range x{lo:.2f} .. x{hi:.2f} of the start, "
                               f"last {series[-1]:.3g} (within x{feature_factor})"))
    if kl:
        raw = [v / kl_weight for v in kl]
        last = float(np.mean(raw[-10:]))
        checks.append((last <= max_kl, f"KL of the latent code, nats per element: start {raw[0]:.3g}, max "
                                       f"{max(raw):.3g}, last 10 steps {last:.3g} (<= {max_kl})"))
    return checks
