# Copyright (c) CaGNet-D2 contributors.
"""Pretraining of a config's backbone trunk on a generated source: the built-in stand-in for
ImageNet.

Every method of the paper starts from an ImageNet-pretrained ResNet-101, whose features were
learned on a broad label set. The built-in dataset has no such network, so this module makes
one: the config's ResNet trunk (``backbone.resnet``; not ASPP-L, which R-101.pkl does not have
either) plus a throw-away 1x1 classifier is trained to segment scenes of the built-in renderer
(:mod:`cagnet.data.synthetic_scenes`) whose classes are *random looks*: ``PRETRAIN.NUM_STUFF``
stuff and ``PRETRAIN.NUM_THINGS`` thing classes, each drawn from the same distribution of looks
that the built-in classes' looks come from, without names. None of them is a class of the built-in
dataset (those looks are decoded from the class names; ``dev/pretrain_backbone.py`` prints the
distance of the nearest source look to each built-in class), so the zero-shot classes, seen and
unseen, are new to the pretrained network, as the paper's unseen classes would be to a network
pretrained without them. (ImageNet itself contains some of the paper's unseen classes.)

The result is written in detectron2's model-zoo format (a pickled ``{"model": {name: array},
"__author__": ..., "matching_heuristics": True}``, names as in ``R-101.pkl`` after conversion:
``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``, ...), so ``MODEL.WEIGHTS`` loads it
exactly as it loads ``R-101.pkl``.
"""
import logging
import os
import pickle
import time
import weakref
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.modeling import build_backbone
from detectron2.projects.deeplab.build_solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..data import synthetic_scenes as scenes
from .checkpoint import AtomicCheckpointer

__all__ = ["PretrainingSource", "TrunkSegmenter", "BackbonePretrainer", "export_trunk", "pretraining_looks"]

logger = logging.getLogger(__name__)
AUTHOR = "cagnet dev/pretrain_backbone.py"  # the shipped trunk, built before the move, says tools/


def pretraining_looks(cfg) -> List[scenes.Look]:
    p = cfg.PRETRAIN
    return scenes.random_looks(p.NUM_STUFF, p.NUM_THINGS, seed=p.SOURCE_SEED, num_top=p.NUM_TOP_STUFF)


class PretrainingSource:
    """``PRETRAIN.NUM_IMAGES`` scenes of the random-look classes, rendered once into memory
    (deterministic by ``PRETRAIN.SOURCE_SEED``): images (N, H, W, 3) uint8 RGB, labels (N, H, W)."""

    def __init__(self, cfg):
        p = cfg.PRETRAIN
        self.looks = pretraining_looks(cfg)
        n, size = p.NUM_IMAGES, p.IMAGE_SIZE
        self.images = np.empty((n, size, size, 3), np.uint8)
        self.labels = np.empty((n, size, size), np.uint8)
        start = time.perf_counter()
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([p.SOURCE_SEED, 7, i]))
            self.images[i], self.labels[i] = scenes.render_scene(rng, size, self.looks)
            if (i + 1) % 2000 == 0:
                logger.info(f"Pretraining source: rendered {i + 1}/{n} images ({time.perf_counter() - start:.0f} s)")

    def batch(self, indices: np.ndarray, flips: np.ndarray, image_format: str) -> Dict[str, torch.Tensor]:
        images = self.images[indices]
        labels = self.labels[indices]
        images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
        labels = np.where(flips[:, None, None], labels[:, :, ::-1], labels)
        if image_format == "BGR":
            images = images[..., ::-1]
        return {
            "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float(),
            "labels": torch.from_numpy(np.ascontiguousarray(labels)).long(),
        }


class TrunkSegmenter(nn.Module):
    """The config's ResNet trunk and a 1x1 classifier over the source's classes."""

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.resnet = build_backbone(cfg).resnet
        self._out = self.resnet._out_features[-1]
        channels = self.resnet.output_shape()[self._out].channels
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.pixel_mean) / self.pixel_std
        return self.classifier(self.resnet(x)[self._out])

    def losses(self, batch) -> Dict[str, torch.Tensor]:
        """Cross-entropy at the feature resolution (labels: nearest at the cells' centres, as in
        the zero-shot models): 16x fewer logits than at the input resolution."""
        logits = self(batch["images"])
        labels = F.interpolate(batch["labels"][:, None].float(), size=logits.shape[-2:], mode="nearest-exact")
        labels = labels[:, 0].long()
        loss = F.cross_entropy(logits, labels, ignore_index=scenes.IGNORE_LABEL)
        with torch.no_grad():
            valid = labels != scenes.IGNORE_LABEL
            acc = (logits.argmax(1) == labels)[valid].float().mean()
        return {"loss_cls": loss, "_pixel_accuracy": acc}


class _PretrainStep(SimpleTrainer):
    """One optimiser step on a batch that is a pure function of (seed, iteration): a resumed run
    sees what the uninterrupted run would have seen."""

    def __init__(self, model, optimizer, source: PretrainingSource, cfg):
        super().__init__(model, data_loader=None, optimizer=optimizer)
        self.source, self.cfg = source, cfg

    def run_step(self):
        p = self.cfg.PRETRAIN
        start = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([p.SOURCE_SEED, 11, self.iter]))
        indices = rng.integers(len(self.source.images), size=p.IMS_PER_BATCH)
        batch = self.source.batch(indices, rng.random(p.IMS_PER_BATCH) < 0.5, self.cfg.INPUT.FORMAT)
        data_time = time.perf_counter() - start
        torch.manual_seed(p.SOURCE_SEED * 1_000_003 + self.iter)
        losses = self.model.losses(batch)
        accuracy = losses.pop("_pixel_accuracy")
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        self._write_metrics(losses, data_time)
        if comm.is_main_process():
            get_event_storage().put_scalar("pixel_accuracy", float(accuracy))


class BackbonePretrainer(DefaultTrainer):
    """detectron2's trainer loop (logging with ETA, TensorBoard, periodic atomic checkpoints,
    ``--resume``) around :class:`TrunkSegmenter` and Adam with a poly schedule."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        p = cfg.PRETRAIN
        source = PretrainingSource(cfg)
        model = TrunkSegmenter(cfg, num_classes=len(source.looks)).to(cfg.MODEL.DEVICE)
        optimizer = torch.optim.Adam(model.parameters(), lr=p.BASE_LR, weight_decay=p.WEIGHT_DECAY)
        self._trainer = _PretrainStep(model, optimizer, source, cfg)
        sched_cfg = cfg.clone()
        sched_cfg.defrost()
        sched_cfg.SOLVER.MAX_ITER, sched_cfg.SOLVER.LR_SCHEDULER_NAME = p.MAX_ITER, "WarmupPolyLR"
        sched_cfg.SOLVER.WARMUP_ITERS = min(100, p.MAX_ITER)
        self.scheduler = build_lr_scheduler(sched_cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter, self.cfg = 0, p.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, max(1, self.cfg.PRETRAIN.MAX_ITER // 4)))
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=50))
        return ret


def export_trunk(model: TrunkSegmenter, path: str, provenance: Optional[Dict] = None) -> None:
    """Write the trunk in detectron2's model-zoo ``.pkl`` form (atomically)."""
    # BatchNorm's step counter is not a weight (R-101.pkl has none; FrozenBN has no such buffer).
    weights = {k: v.detach().cpu().numpy() for k, v in model.resnet.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    data = {"model": weights, "__author__": AUTHOR, "matching_heuristics": True, "provenance": provenance or {}}
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=4)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

