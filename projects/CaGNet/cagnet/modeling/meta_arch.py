# Copyright (c) CaGNet-D2 contributors.
"""The CaGNet meta-architecture: E -> CM -> C for segmentation, plus G and D for feature generation.

Training alternates two loss graphs (paper Sec. 3.4), driven by :class:`cagnet.engine.CaGNetTrainer`:

* training step, on real images with seen-class labels: D first (real vs generated, both
  detached), then E, CM, G, C with L_CLS + L_ADV + lambda1 L_REC + lambda2 L_KL;
* finetuning step, without images: G generates features of random seen and unseen labels from
  z ~ N(0, I); G, C (and the conv C shares with D) learn from C's cross-entropy and G's adversarial term;
  E and CM are not touched.

``forward`` follows detectron2: in training it returns a dict of losses (here: all losses of one
training step, for inspection and tests; the trainer optimises D's and the rest's separately), at
inference ``[{"sem_seg": (K, H, W) logits}]`` over all seen and unseen classes.
"""
import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from detectron2.utils import comm

from ..data.embeddings import load_class_embeddings
from .contextual_module import ContextOutput, ContextualModule
from .discriminator_classifier import DiscriminatorClassifier
from .feature_generator import FeatureGenerator
from .losses import (
    adversarial_loss,
    classification_loss,
    classwise_mmd_loss,
    kl_divergence,
    median_distance,
    reconstruction_loss,
)
from .zero_shot_base import ZeroShotSegmentor, calibrate_scores

__all__ = [
    "CaGNet",
    "PhaseLossWeights",
    "TrainingFeatures",
    "zero_shot_classes_from_checkpoint",
    "zero_shot_classes_from_config",
]


@dataclass
class TrainingFeatures:
    """What one training-step forward of E, CM and G yields, over the labelled pixels (P)."""

    real: torch.Tensor  # (P, l) CM output X
    fake: Optional[torch.Tensor]  # (P, l) G(z, w); None without G
    labels: torch.Tensor  # (P,) class index
    kl: Optional[torch.Tensor]  # scalar KL of the latent code over the labelled pixels; None without CM


@dataclass(frozen=True)
class PhaseLossWeights:
    """The loss weights that a phase of the run may set for itself (SOLVER.CAGNET_SCHEDULE.MIXED): C's
    cross-entropy on real and on generated seen features in the training step, and C's
    cross-entropy and G's adversarial term in the finetuning step."""

    cls: float
    fake_cls: float
    finetune_cls: float
    finetune_adv: float


def zero_shot_classes_from_config(cfg):
    """Class names, embedding table, seen and unseen indices for a config.

    They come from the metadata of the first training dataset (or test dataset), where the
    dataset registration put them; ``MODEL.CAGNET.EMBEDDINGS_FILE`` overrides the table.
    """
    names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
    if not names:
        raise ValueError("CaGNet needs DATASETS.TRAIN or DATASETS.TEST to know its classes")
    meta = MetadataCatalog.get(names[0])
    for key in ("stuff_classes", "seen_class_ids", "unseen_class_ids"):
        if not hasattr(meta, key):
            raise KeyError(
                f"Dataset {names[0]!r} has no metadata {key!r}: register it with "
                "cagnet.data.register_zero_shot_sem_seg (or import cagnet to get the built-ins)"
            )
    path = cfg.MODEL.CAGNET.EMBEDDINGS_FILE or getattr(meta, "class_embeddings_file", "")
    if not path:
        raise KeyError(
            f"No class embeddings for dataset {names[0]!r}: set MODEL.CAGNET.EMBEDDINGS_FILE or "
            "the metadata 'class_embeddings_file'"
        )
    table = load_class_embeddings(path, expected_names=meta.stuff_classes)
    return {
        "class_names": list(meta.stuff_classes),
        "class_embeddings": torch.from_numpy(table["vectors"]),
        "seen_class_ids": list(meta.seen_class_ids),
        "unseen_class_ids": list(meta.unseen_class_ids),
        "ignore_value": getattr(meta, "ignore_label", 255),
    }


def zero_shot_classes_from_checkpoint(path: str) -> Optional[Dict]:
    """The class list a checkpoint was saved with (``"zero_shot_classes"``), or None."""
    from .checkpoint_file import read_checkpoint_file

    if not path.endswith(".pth"):
        return None  # e.g. a Caffe2 .pkl backbone: no class list
    data = read_checkpoint_file(path)
    info = data.get("zero_shot_classes") if isinstance(data, dict) else None
    if info is None:
        return None
    return {
        "class_names": list(info["class_names"]),
        "class_embeddings": torch.as_tensor(info["class_embeddings"], dtype=torch.float32),
        "seen_class_ids": list(info["seen_class_ids"]),
        "unseen_class_ids": list(info["unseen_class_ids"]),
    }


@META_ARCH_REGISTRY.register()
class CaGNet(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        contextual_module: Optional[ContextualModule],
        generator: Optional[FeatureGenerator],
        heads: DiscriminatorClassifier,
        class_embeddings: torch.Tensor,
        seen_class_ids: Sequence[int],
        unseen_class_ids: Sequence[int],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        class_names: Optional[Sequence[str]] = None,
        ignore_value: int = 255,
        cls_weight: float = 1.0,
        adv_weight: float = 1.0,
        rec_weight: float = 10.0,
        kl_weight: float = 100.0,
        rec_loss: str = "l2",
        rec_normalization: str = "channel_sum",
        adv_loss: str = "lsgan",
        fake_cls_weight: float = 0.0,
        detach_latent: bool = False,
        detach_rec_target: bool = False,
        finetune_unseen_fraction: float = 0.5,
        finetune_unseen_class_weight: float = 0.0,
        finetune_pixels: int = 4096,
        finetune_adv_weight: float = 1.0,
        finetune_detach_generated: bool = False,
        channels_last: bool = True,
        prior_mmd_weight: float = 0.0,
        prior_mmd_bandwidths: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
        prior_mmd_pixels_per_class: int = 64,
        squash_features_without_cm: bool = False,
    ):
        """
        Args:
            backbone: E; its output ``"aspp"`` is the feature map F.
            contextual_module, generator, heads: CM, G, and D+C. Without CM (None), X = F and
                G's latent code is z ~ N(0, I) in both steps; without G (None, and heads without
                D), only C's cross-entropy (and CM's KL) train, and there is no finetuning step.
            class_embeddings: (K, d) word embeddings of all classes, in class-index order.
            seen_class_ids, unseen_class_ids: class indices of the two groups.
            class_names: K names (kept for tools; saved in checkpoints via the model's buffers).
            finetune_pixels: generated pixels per finetuning step.
            squash_features_without_cm: without CM, X = sigmoid(F) (MODEL.CONTEXTUAL_MODULE.
                SIGMOID_OUTPUT in the ablation of a reference-style model whose X is squashed).
            Other arguments: the loss options of ``MODEL.CAGNET`` (see config.py).
        """
        super().__init__()
        self.backbone = backbone
        self.contextual_module = contextual_module
        self.generator = generator
        self.heads = heads
        num_classes = class_embeddings.shape[0]
        if heads.num_classes != num_classes:
            raise ValueError(f"C predicts {heads.num_classes} classes but {num_classes} embeddings were given")
        groups = sorted(list(seen_class_ids) + list(unseen_class_ids))
        if groups != list(range(num_classes)):
            raise ValueError(
                f"seen {list(seen_class_ids)} and unseen {list(unseen_class_ids)} class ids must "
                f"partition 0..{num_classes - 1}"
            )
        self.register_buffer("class_embeddings", class_embeddings.float().clone(), persistent=True)
        self.register_buffer("seen_ids", torch.as_tensor(sorted(seen_class_ids), dtype=torch.long))
        self.register_buffer("unseen_ids", torch.as_tensor(sorted(unseen_class_ids), dtype=torch.long))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # gamma of the calibrated variant (MODEL.CALIBRATION): subtracted from the seen scores at test time.
        self.register_buffer("calibration", torch.zeros(()), persistent=True)
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_value = ignore_value
        self.cls_weight, self.adv_weight = cls_weight, adv_weight
        self.rec_weight, self.kl_weight = rec_weight, kl_weight
        self.rec_loss, self.adv_loss = rec_loss, adv_loss
        self.rec_normalization = rec_normalization
        self.fake_cls_weight = fake_cls_weight
        self.detach_latent = detach_latent
        self.detach_rec_target = detach_rec_target
        self.finetune_unseen_fraction = finetune_unseen_fraction
        self.finetune_unseen_class_weight = finetune_unseen_class_weight
        self.finetune_pixels = finetune_pixels
        self.finetune_adv_weight = finetune_adv_weight
        self.finetune_detach_generated = finetune_detach_generated
        self.channels_last = channels_last
        self.prior_mmd_weight = prior_mmd_weight
        self.prior_mmd_bandwidths = tuple(float(b) for b in prior_mmd_bandwidths)
        self.prior_mmd_pixels_per_class = prior_mmd_pixels_per_class
        self.feature_dim = backbone.output_shape()["aspp"].channels
        self.squash_features_without_cm = squash_features_without_cm and contextual_module is None
        if generator is not None and heads.discriminator is None:
            raise ValueError("A model with G needs D: build the heads with_discriminator=True")
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
            if self.contextual_module is not None:
                self.contextual_module.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg, classes: Optional[Dict] = None):
        """``classes`` (``class_names``, ``class_embeddings``, ``seen_class_ids``,
        ``unseen_class_ids``) overrides the dataset's, e.g. with a checkpoint's own class list
        (see :func:`zero_shot_classes_from_checkpoint`)."""
        classes = dict(classes) if classes is not None else zero_shot_classes_from_config(cfg)
        backbone = build_backbone(cfg)
        feature_dim = backbone.output_shape()["aspp"].channels
        embeddings = classes["class_embeddings"]
        finetune_pixels = cfg.MODEL.CAGNET.FINETUNE_PIXELS
        if finetune_pixels <= 0:
            if not (cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute"):
                raise ValueError(
                    "MODEL.CAGNET.FINETUNE_PIXELS must be set when the training batch has no fixed "
                    "crop size (INPUT.CROP.ENABLED with TYPE 'absolute')"
                )
            stride = backbone.output_shape()["aspp"].stride
            crop = cfg.INPUT.CROP.SIZE
            # Per worker: its share of the batch (detectron2 splits IMS_PER_BATCH over the workers).
            images = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
            finetune_pixels = images * int(np.ceil(crop[0] / stride) * np.ceil(crop[1] / stride))
        c = cfg.MODEL.CAGNET
        return {
            "backbone": backbone,
            "contextual_module": ContextualModule(cfg, feature_dim) if cfg.MODEL.CONTEXTUAL_MODULE.ENABLED else None,
            "generator": FeatureGenerator(cfg, feature_dim, embeddings.shape[1]) if cfg.MODEL.FEATURE_GENERATOR.ENABLED else None,
            "heads": DiscriminatorClassifier(cfg, feature_dim, embeddings.shape[0]),
            **classes,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "cls_weight": c.CLS_WEIGHT,
            "adv_weight": c.ADV_WEIGHT,
            "rec_weight": c.REC_WEIGHT,
            "kl_weight": c.KL_WEIGHT,
            "rec_loss": c.REC_LOSS,
            "rec_normalization": c.REC_NORMALIZATION,
            "adv_loss": c.ADV_LOSS,
            "fake_cls_weight": c.FAKE_CLS_WEIGHT,
            "detach_latent": c.DETACH_LATENT,
            "detach_rec_target": c.DETACH_REC_TARGET,
            "finetune_unseen_fraction": c.FINETUNE_UNSEEN_FRACTION,
            "finetune_unseen_class_weight": c.FINETUNE_UNSEEN_CLASS_WEIGHT,
            "finetune_pixels": finetune_pixels,
            "finetune_adv_weight": c.FINETUNE_ADV_WEIGHT,
            "finetune_detach_generated": c.FINETUNE_DETACH_GENERATED,
            "channels_last": c.CHANNELS_LAST,
            "prior_mmd_weight": c.PRIOR_MMD_WEIGHT,
            "prior_mmd_bandwidths": tuple(c.PRIOR_MMD_BANDWIDTHS),
            "prior_mmd_pixels_per_class": c.PRIOR_MMD_PIXELS_PER_CLASS,
            "squash_features_without_cm": cfg.MODEL.CONTEXTUAL_MODULE.SIGMOID_OUTPUT,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # Shared with SPNet and ZS3Net (same attributes): the class list as checkpoints store it,
    # image normalisation and padding, and labels at the feature resolution.
    zero_shot_classes = ZeroShotSegmentor.zero_shot_classes
    set_calibration = ZeroShotSegmentor.set_calibration
    preprocess_image = ZeroShotSegmentor.preprocess_image
    feature_labels = ZeroShotSegmentor.feature_labels
    postprocess = staticmethod(ZeroShotSegmentor.postprocess)

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    # ------------------------------------------------------------------ training step
    def context(self, features: torch.Tensor, sample: Optional[bool] = None) -> ContextOutput:
        """CM on F; without CM, X = F (sigmoid(F) with ``squash_features_without_cm``) and the latent
        code is z ~ N(0, I) (mean 0 at test time)."""
        if self.contextual_module is not None:
            return self.contextual_module(features, sample=sample)
        sample = self.training if sample is None else sample
        zeros = torch.zeros_like(features)
        z = torch.randn_like(features) if sample else zeros
        weights = features.new_ones(features.shape[0], 1, *features.shape[2:])
        x = torch.sigmoid(features) if self.squash_features_without_cm else features
        return ContextOutput(x=x, z=z, mu=zeros, logvar=zeros, scale_weights=weights)

    def extract_features(self, batched_inputs: List[Dict], frozen_context: bool = False) -> TrainingFeatures:
        """E, CM and G on a batch of images with ``"sem_seg"`` labels (seen classes only).

        ``frozen_context``: E and CM run without gradient (SOLVER.CAGNET_SCHEDULE.MIXED: they are frozen),
        so X and CM's sampled code are fixed inputs and there is no KL term to learn from."""
        images = self.preprocess_image(batched_inputs)
        with torch.no_grad() if frozen_context else contextlib.nullcontext():
            features = self.backbone(images.tensor)["aspp"]
            ctx = self.context(features)
        labels = self.feature_labels(batched_inputs, images.tensor.shape[-2:], features.shape[-2:])
        valid = labels != self.ignore_value
        # (N, C, h, w) -> (P, C) over labelled pixels.
        def pixels(t):
            return t.permute(0, 2, 3, 1)[valid]

        labels = labels[valid]
        fake = None
        if self.generator is not None:
            z = pixels(ctx.z)
            if self.detach_latent:
                z = z.detach()
            fake = self.generator(z, self.class_embeddings[labels])
        kl = None
        if self.contextual_module is not None and not frozen_context:
            kl = kl_divergence(pixels(ctx.mu), pixels(ctx.logvar))
        return TrainingFeatures(real=pixels(ctx.x), fake=fake, labels=labels, kl=kl)

    def sample_latent(self, num: int) -> torch.Tensor:
        """G's latent code for generated features: z ~ N(0, I) (the paper's prior)."""
        return torch.randn(num, self.generator.latent_dim, device=self.device)

    def discriminator_losses(self, feats: TrainingFeatures, heads: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        """D's step: real features -> 1, generated -> 0 (both detached: only D learns here)."""
        if feats.fake is None or self.adv_weight <= 0:
            return {}  # no G, or no adversarial loss: D does not learn
        heads = heads if heads is not None else self.heads
        n = feats.real.shape[0]
        _, d = heads(disc_input=torch.cat([feats.real.detach(), feats.fake.detach()]))
        return {
            "loss_d_real": self.adv_weight * adversarial_loss(d[:n], 1.0, self.adv_loss),
            "loss_d_fake": self.adv_weight * adversarial_loss(d[n:], 0.0, self.adv_loss),
        }

    def loss_weights(self) -> PhaseLossWeights:
        """The weights of MODEL.CAGNET (a phase without its own)."""
        return PhaseLossWeights(cls=self.cls_weight, fake_cls=self.fake_cls_weight,
                                finetune_cls=self.cls_weight, finetune_adv=self.finetune_adv_weight)

    def training_losses(self, feats: TrainingFeatures, heads: Optional[nn.Module] = None,
                        weights: Optional[PhaseLossWeights] = None) -> Dict[str, torch.Tensor]:
        """Step of E, CM, G, C: L_CLS + L_ADV + lambda1 L_REC + lambda2 L_KL. A term whose weight
        is 0, or whose module the model does not have, is left out. ``weights``: the phase's
        own (default :meth:`loss_weights`). C's softmax is over all S + U classes, as in the
        reference code, so real seen pixels also push the unseen logits down."""
        heads = heads if heads is not None else self.heads
        w = weights or self.loss_weights()
        n = feats.real.shape[0]
        if feats.fake is None:
            losses = {"loss_cls": w.cls * classification_loss(heads.classify(feats.real), feats.labels)}
            if feats.kl is not None and self.kl_weight > 0:
                losses["loss_kl"] = self.kl_weight * feats.kl
            return losses
        # C's loss on generated seen features trains C only, as in the reference code (G learns
        # from REC and ADV here; through this loss it would also learn to please C).
        cls_input = feats.real if w.fake_cls <= 0 else torch.cat([feats.real, feats.fake.detach()])
        disc_input = feats.fake if self.adv_weight > 0 else None
        cls_logits, d_fake = heads(cls_input=cls_input, disc_input=disc_input, frozen_discriminator=True)
        losses = {"loss_cls": w.cls * classification_loss(cls_logits[:n], feats.labels)}
        if self.adv_weight > 0:
            losses["loss_adv"] = self.adv_weight * adversarial_loss(d_fake, 1.0, self.adv_loss)
        if self.rec_weight > 0:
            losses["loss_rec"] = self.rec_weight * reconstruction_loss(
                feats.fake, feats.real.detach() if self.detach_rec_target else feats.real, self.rec_loss,
                self.rec_normalization, labels=feats.labels,
            )
        if feats.kl is not None and self.kl_weight > 0:
            losses["loss_kl"] = self.kl_weight * feats.kl
        if w.fake_cls > 0:
            losses["loss_cls_fake"] = w.fake_cls * classification_loss(cls_logits[n:], feats.labels)
        if self.prior_mmd_weight > 0:
            losses["loss_prior_mmd"] = self.prior_mmd_weight * self.prior_mmd_loss(feats)
        return losses

    def prior_mmd_loss(self, feats: TrainingFeatures) -> torch.Tensor:
        """Not in the paper (MODEL.CAGNET.PRIOR_MMD_WEIGHT): class-wise MMD between G(z, w_c) with
        the finetuning step's latent code z ~ N(0, I), and the real features of class c
        (detached: only G learns). Kernel bandwidths follow the scale of the real features."""
        real = feats.real.detach().float()
        scale = median_distance(real)
        return classwise_mmd_loss(
            real, feats.labels, self.generate_features,
            sigmas=[b * scale for b in self.prior_mmd_bandwidths],
            max_pixels_per_class=self.prior_mmd_pixels_per_class,
        )

    # ------------------------------------------------------------------ finetuning step
    @property
    def finetune_unseen_probability(self) -> float:
        """Probability that a generated pixel is labelled unseen: FINETUNE_UNSEEN_FRACTION, or
        with FINETUNE_UNSEEN_CLASS_WEIGHT w (each unseen class drawn w times as often as a seen
        one, the reference code's prior) wU / (S + wU)."""
        num_seen, num_unseen = len(self.seen_ids), len(self.unseen_ids)
        if num_unseen == 0:
            return 0.0
        w = self.finetune_unseen_class_weight
        if w > 0:
            return w * num_unseen / (num_seen + w * num_unseen)
        return self.finetune_unseen_fraction

    def sample_finetune_labels(self, num_pixels: Optional[int] = None) -> torch.Tensor:
        """Random pixel labels: unseen with probability :attr:`finetune_unseen_probability`,
        else seen; uniform within each group (i.i.d. per pixel)."""
        n = num_pixels or self.finetune_pixels
        fraction = self.finetune_unseen_probability
        unseen = torch.rand(n, device=self.device) < fraction
        labels = self.seen_ids[torch.randint(len(self.seen_ids), (n,), device=self.device)]
        if unseen.any():
            labels[unseen] = self.unseen_ids[torch.randint(len(self.unseen_ids), (int(unseen.sum()),), device=self.device)]
        return labels

    def generate_features(self, labels: torch.Tensor) -> torch.Tensor:
        """G(z, w) for pixel labels (P,), with the finetuning step's z (:meth:`sample_latent`)."""
        z = self.sample_latent(labels.shape[0])
        return self.generator(z, self.class_embeddings[labels])

    def finetuning_losses(self, fake: torch.Tensor, labels: torch.Tensor, heads: Optional[nn.Module] = None,
                          weights: Optional[PhaseLossWeights] = None) -> Dict[str, torch.Tensor]:
        """C's cross-entropy on generated seen+unseen features and G's adversarial term on them.
        ``weights``: the phase's own."""
        heads = heads if heads is not None else self.heads
        w = weights or self.loss_weights()
        use_adv = w.finetune_adv > 0 and self.adv_weight > 0 and fake.shape[0] > 0
        # Detached for C's loss (an option): G then does not move its features to where C tells
        # the classes apart best, unanchored by any real feature of an unseen class.
        cls_input = fake.detach() if self.finetune_detach_generated else fake
        cls_logits, d_fake = heads(cls_input=cls_input, disc_input=fake if use_adv else None, frozen_discriminator=True)
        losses = {"loss_cls_generated": w.finetune_cls * classification_loss(cls_logits, labels)}
        if use_adv:
            losses["loss_adv_generated"] = w.finetune_adv * adversarial_loss(d_fake, 1.0, self.adv_loss)
        return losses

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        feats = self.extract_features(batched_inputs)
        return {**self.discriminator_losses(feats), **self.training_losses(feats)}

    def segment_features(self, images: ImageList):
        """E -> CM (Z = mu) -> C: class logits (N, K, h, w) at feature resolution, and CM's output."""
        ctx = self.context(self.backbone(images.tensor)["aspp"], sample=False)
        return self.heads.classify(ctx.x), ctx

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        images = self.preprocess_image(batched_inputs)
        logits, _ = self.segment_features(images)
        logits = calibrate_scores(logits, self.seen_ids, self.calibration)
        logits = F.interpolate(logits, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        results = []
        for logit, item, size in zip(logits, batched_inputs, images.image_sizes):
            height, width = item.get("height", size[0]), item.get("width", size[1])
            results.append({"sem_seg": self.postprocess(logit, size, height, width)})
        return results
