# Copyright (c) CaGNet-D2 contributors.
"""Why a generative zero-shot model transfers or not: its features, measured per class.

For a trained model with a generator (CaGNet, ZS3Net) and a labelled dataset (test labels hold
every class, unseen ones included), on the labelled feature pixels of the first images:

* real vs generated class means: ``gen_to_real`` = ||mean G(z ~ N(0, I), w_c) - mean real_c||,
  next to ``separation`` = distance from real_c's mean to the nearest other class's real mean,
  and which real class mean lies nearest to the generated one (``nearest_real``): a generated
  class that lands on another class's features teaches C the wrong thing;
* C on generated features: how often C gives class c to G's features for c (what the finetuning
  step can teach C) and to the real features of c;
* seen bias of C on real unseen pixels: how often the true unseen logit beats every seen logit
  (what the uncalibrated model gets right), and how often it is the best among the unseen
  logits only (what a perfect calibration could get right);
* with a contextual module (CaGNet), CM's latent code at the real pixels: its KL to N(0, I) per
  element (``kl``), and G fed with it instead of prior noise: ``gen_to_real_context`` =
  ||mean G(z ~ N(mu_p, sigma_p), w_c) - mean real_c|| over the real pixels p of c, and C's
  accuracy on those features (``acc_generated_context``). The finetuning step feeds G prior
  noise; a gap between ``gen_to_real`` and ``gen_to_real_context`` means G's features depend on
  codes that N(0, I) does not supply (the posterior and the prior differ); a large
  ``gen_to_real_context`` for unseen classes means that even their real context does not make G
  place them.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils

from ..modeling.contextual_module import sample_latent_code
from ..modeling.losses import kl_divergence
from ..vocabulary.class_names import labels_to_model_classes

__all__ = ["collect_real_features", "feature_diagnostics", "classify_features"]


def _real_feature_map(model, images) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The features C classifies at test time (CaGNet's X with CM at z = mu, else E's F) and,
    with a contextual module, CM's latent code [mu, logvar] (N, 2l, h, w); else None."""
    if hasattr(model, "segment_features"):
        ctx = model.segment_features(images)[1]
        latent = torch.cat([ctx.mu, ctx.logvar], dim=1) if getattr(model, "contextual_module", None) is not None else None
        return ctx.x, latent
    return model.frozen_features(images), None


def classify_features(model, features: torch.Tensor) -> torch.Tensor:
    """C's logits (P, K) of pixel features (P, l), uncalibrated."""
    if hasattr(model, "heads"):
        return model.heads.classify(features)
    return model.classifier(features[:, :, None, None])[:, :, 0, 0]


@torch.no_grad()
def collect_real_features(cfg, model, dataset: str, count: int) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Real features (P, l), class indices of ``model`` (P,) and CM's latent code [mu, logvar]
    (P, 2l; None without CM) of the labelled feature pixels of the first ``count`` images of
    ``dataset`` (classes matched by name)."""
    records = DatasetCatalog.get(dataset)[:count]
    if not records:
        raise ValueError(f"Dataset {dataset!r} has no images")
    feats, labels, latents = [], [], []
    for rec in records:
        if "sem_seg_file_name" not in rec:
            raise ValueError(f"{rec['file_name']} has no label file (sem_seg_file_name) in {dataset!r}")
        image = utils.read_image(rec["file_name"], format=cfg.INPUT.FORMAT)
        values = utils.read_image(rec["sem_seg_file_name"])
        values = values[..., 0] if values.ndim == 3 else values
        label = torch.as_tensor(labels_to_model_classes(values, dataset, model.class_names, model.ignore_value))
        inputs = [{"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32")),
                   "sem_seg": label}]
        images = model.preprocess_image(inputs)
        x, latent = _real_feature_map(model, images)
        lab = model.feature_labels(inputs, images.tensor.shape[-2:], x.shape[-2:])
        valid = lab != model.ignore_value
        feats.append(x.permute(0, 2, 3, 1)[valid].float())
        labels.append(lab[valid])
        if latent is not None:
            latents.append(latent.permute(0, 2, 3, 1)[valid].float())
    return torch.cat(feats), torch.cat(labels), (torch.cat(latents) if latents else None)


@torch.no_grad()
def feature_diagnostics(model, real: torch.Tensor, labels: torch.Tensor, generated_per_class: int = 512,
                        seed: int = 0, latent: Optional[torch.Tensor] = None) -> Dict:
    """The measurements of the module docstring: per class (of those present in ``labels``) and
    summaries over seen and unseen classes; ``latent`` ([mu, logvar] per pixel, from
    :func:`collect_real_features`) adds the latent-code rows."""
    if not hasattr(model, "generate_features") or getattr(model, "generator", None) is None:
        raise ValueError(f"{type(model).__name__} has no feature generator G to diagnose")
    torch.manual_seed(seed)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    seen = set(model.seen_ids.tolist())
    present = sorted(int(c) for c in labels.unique())
    means = {c: real[labels == c].mean(0) for c in present}
    mean_stack = torch.stack([means[c] for c in present])
    logits = classify_features(model, real)
    seen_ids, unseen_ids = model.seen_ids, model.unseen_ids
    rows: List[Dict] = []
    for c in present:
        gen = model.generate_features(torch.full((generated_per_class,), c, dtype=torch.long, device=real.device)).float()
        gen_mean = gen.mean(0)
        d_real = torch.linalg.norm(mean_stack - gen_mean, dim=1)
        others = torch.linalg.norm(mean_stack - means[c], dim=1)
        others[present.index(c)] = float("inf")
        mine = labels == c
        row = {
            "class": names[c],
            "seen": c in seen,
            "pixels": int(mine.sum()),
            "gen_to_real": float(d_real[present.index(c)]),
            "separation": float(others.min()),
            "nearest_real": names[present[int(d_real.argmin())]],
            "acc_real": float((logits[mine].argmax(1) == c).float().mean()),
            "acc_generated": float((classify_features(model, gen).argmax(1) == c).float().mean()),
        }
        if c not in seen and len(unseen_ids):
            lg = logits[mine]
            row["true_above_all_seen"] = float((lg[:, c] > lg[:, seen_ids].max(1).values).float().mean())
            row["best_among_unseen"] = float((unseen_ids[lg[:, unseen_ids].argmax(1)] == c).float().mean())
        rows.append(row)
    if latent is not None:  # a second pass, so that the rows above draw the same noise with or without it
        for c, row in zip(present, rows):
            mu, logvar = latent[labels == c].chunk(2, dim=1)
            row["kl"] = float(kl_divergence(mu, logvar))
            z = sample_latent_code(mu, logvar)
            gen_ctx = model.generator(z, model.class_embeddings[torch.full((z.shape[0],), c, device=z.device)]).float()
            row["gen_to_real_context"] = float(torch.linalg.norm(gen_ctx.mean(0) - means[c]))
            row["acc_generated_context"] = float((classify_features(model, gen_ctx).argmax(1) == c).float().mean())

    def summary(group):
        rs = [r for r in rows if r["seen"] == (group == "seen")]
        if not rs:
            return {}
        keys = ["gen_to_real", "separation", "acc_real", "acc_generated", "true_above_all_seen", "best_among_unseen",
                "kl", "gen_to_real_context", "acc_generated_context"]
        out = {k: float(np.mean([r[k] for r in rs])) for k in keys if all(k in r for r in rs)}
        out["generated_nearest_own_class"] = float(np.mean([r["nearest_real"] == r["class"] for r in rs]))
        return out

    return {"classes": rows, "seen": summary("seen"), "unseen": summary("unseen"), "pixels": int(labels.numel())}
