# Copyright (c) CaGNet-D2 contributors.
"""ZS3Net (Bucher et al., NeurIPS 2019), the generative baseline of the paper's Table 1.

A segmentation network, E (the same backbone as CaGNet) + a 1x1 classifier C, is trained in three
consecutive stages (driven by :class:`cagnet.engine.ZeroShotStagedTrainer`):

* ``segmentation``: E and C with cross-entropy on the seen classes (softmax over seen scores);
* ``generator``: E frozen; a GMMN G(noise, w) -- a pixel-wise MLP on [noise, class embedding] --
  is fitted to the real features of each class in the batch with an MMD loss (sum of Gaussian
  kernels), class by class;
* ``classifier``: E and G frozen; C is retrained on the real features of the batch plus generated
  features of unseen classes.

With self-training (``MODEL.SELF_TRAINING``) the labels of a batch also hold pseudo-labelled
unseen pixels: G is then fitted to them too, conditioned on their class's embedding, and C sees
them as real unseen features. Features are always taken with E in eval mode (test-time BN), since
those are the features C classifies at test time.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from .feature_generator import FeatureGenerator
from .losses import classification_loss, classwise_mmd_loss
from .meta_arch import zero_shot_classes_from_config
from .zero_shot_base import ZeroShotSegmentor

__all__ = ["ZS3Net"]


@META_ARCH_REGISTRY.register()
class ZS3Net(ZeroShotSegmentor):
    STAGES = ("segmentation", "generator", "classifier")

    @configurable
    def __init__(
        self,
        *,
        feature_dim: int,
        generator: FeatureGenerator,
        mmd_sigmas: Sequence[float] = (2, 5, 10, 20, 40, 80),
        mmd_pixels_per_class: int = 128,
        generated_unseen_fraction: float = 0.5,
        **kwargs,
    ):
        """
        Args:
            feature_dim: channels l of F.
            generator: G; its ``latent_dim`` is the noise size.
            mmd_sigmas: bandwidths of the Gaussian kernels of the MMD loss (ZS3Net: 2 ... 80).
            mmd_pixels_per_class: real pixels per class and batch in the MMD (0: all).
            generated_unseen_fraction: in the classifier stage, the fraction of the training
                pixels that are generated unseen features (the rest are the batch's real pixels).
        """
        super().__init__(**kwargs)
        if not 0.0 <= generated_unseen_fraction < 1.0:
            raise ValueError(f"generated_unseen_fraction must be in [0, 1), got {generated_unseen_fraction}")
        self.classifier = nn.Conv2d(feature_dim, self.num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.generator = generator
        self.mmd_sigmas = tuple(float(s) for s in mmd_sigmas)
        self.mmd_pixels_per_class = mmd_pixels_per_class
        self.generated_unseen_fraction = generated_unseen_fraction
        self._frozen_pixels = None  # features of the last frozen-E forward (not saved)

    @classmethod
    def from_config(cls, cfg, classes: Optional[Dict] = None):
        classes = dict(classes) if classes is not None else zero_shot_classes_from_config(cfg)
        backbone = build_backbone(cfg)
        feature_dim = backbone.output_shape()["aspp"].channels
        z = cfg.MODEL.ZS3NET
        generator = FeatureGenerator(
            latent_dim=z.NOISE_DIM,
            embedding_dim=classes["class_embeddings"].shape[1],
            out_dim=feature_dim,
            hidden_dims=tuple(z.GENERATOR_HIDDEN_DIMS),
            negative_slope=0.2,
            dropout=z.GENERATOR_DROPOUT,
        )
        return {
            "backbone": backbone,
            "feature_dim": feature_dim,
            "generator": generator,
            "mmd_sigmas": tuple(z.MMD_SIGMAS),
            "mmd_pixels_per_class": z.MMD_PIXELS_PER_CLASS,
            "generated_unseen_fraction": z.GENERATED_UNSEEN_FRACTION,
            **classes,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "channels_last": cfg.MODEL.CAGNET.CHANNELS_LAST,
        }

    def stage_modules(self, stage: str) -> Dict[str, nn.Module]:
        """The modules a stage trains, by LR-multiplier name (see SOLVER.LR_MULTIPLIERS)."""
        modules = {
            "segmentation": {"BACKBONE": self.backbone.resnet, "ASPP": self.backbone.aspp, "CLASSIFIER": self.classifier},
            "generator": {"GENERATOR": self.generator},
            "classifier": {"CLASSIFIER": self.classifier},
        }
        if stage not in modules:
            raise KeyError(f"ZS3Net has no stage {stage!r}")
        return modules[stage]

    def segment(self, images):
        return self.classifier(self.features(images))

    def generate_features(self, labels: torch.Tensor) -> torch.Tensor:
        """G(noise, w) for pixel labels (P,); noise ~ U[0, 1) as in ZS3Net."""
        noise = torch.rand(labels.shape[0], self.generator.latent_dim, device=self.device)
        return self.generator(noise, self.class_embeddings[labels])

    def sample_unseen_labels(self, n: int) -> torch.Tensor:
        return self.unseen_ids[torch.randint(len(self.unseen_ids), (n,), device=self.device)]

    def _real_pixels(self, batched_inputs: List[Dict], frozen: bool, reuse: bool = False):
        """Labelled pixels (P, l) of F and their labels (P,). With ``frozen`` (E fixed, no
        gradient) the result is kept, and ``reuse`` returns the kept one instead of running E
        again (several steps on one batch)."""
        if reuse:
            if self._frozen_pixels is None:
                raise RuntimeError("reuse=True without an earlier frozen-feature forward")
            return self._frozen_pixels
        images = self.preprocess_image(batched_inputs)
        features = self.frozen_features(images) if frozen else self.features(images)
        labels = self.feature_labels(batched_inputs, images.tensor.shape[-2:], features.shape[-2:])
        valid = labels != self.ignore_value
        out = (self.pixels(features, valid), labels[valid])
        self._frozen_pixels = out if frozen else None
        return out

    def forward(self, batched_inputs: List[Dict], stage: str = "segmentation", reuse_features: bool = False):
        """Training: the losses of ``stage``; ``reuse_features`` runs another step of a frozen-E
        stage on the features of the previous call (the trainer's steps per batch)."""
        if not self.training:
            return self.inference(batched_inputs)
        if stage == "segmentation":
            real, labels = self._real_pixels(batched_inputs, frozen=False)
            seen_labels = self.seen_position[labels]
            if (seen_labels < 0).any():
                raise ValueError("The segmentation stage received unseen-class labels")
            logits = self.classifier(real[:, :, None, None])[:, :, 0, 0]
            return {"loss_cls": classification_loss(logits[:, self.seen_ids], seen_labels)}
        if stage == "generator":
            real, labels = self._real_pixels(batched_inputs, frozen=True, reuse=reuse_features)
            loss = classwise_mmd_loss(real, labels, self.generate_features, self.mmd_sigmas, self.mmd_pixels_per_class)
            return {"loss_mmd": loss}
        if stage == "classifier":
            real, labels = self._real_pixels(batched_inputs, frozen=True, reuse=reuse_features)
            f = self.generated_unseen_fraction if len(self.unseen_ids) else 0.0
            n_fake = int(round(real.shape[0] * f / (1.0 - f)))
            if n_fake > 0:
                fake_labels = self.sample_unseen_labels(n_fake)
                with torch.no_grad():  # G is fixed here (its dropout stays on: part of its noise)
                    fake = self.generate_features(fake_labels)
                real, labels = torch.cat([real, fake]), torch.cat([labels, fake_labels])
            logits = self.classifier(real[:, :, None, None])[:, :, 0, 0]
            return {"loss_cls": classification_loss(logits, labels)}
        raise KeyError(f"ZS3Net has no stage {stage!r}")
