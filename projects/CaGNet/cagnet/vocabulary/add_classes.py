# Copyright (c) CaGNet-D2 contributors.
"""Add classes to a trained CaGNet model without images of them.

CaGNet's classifier C learns unseen classes from features that G generates from their word
embeddings; the same mechanism extends a trained model's vocabulary after training:

1. :func:`class_embeddings_for` builds the new names' embeddings with the project's embedding
   code, from the source(s) the model's table came from (checked: same dimension and, where the
   model's own names can be looked up, the same vectors);
2. :func:`extend_classes` appends them to ``class_embeddings``, counts them among the unseen
   classes and grows C's last 1x1 conv: old rows are copied unchanged; a new row starts as the
   mean of the old rows (default) or as the rescaled mean hidden activation of generated
   features of its class ("imprint");
3. :func:`finetune_on_generated` runs the model's own finetuning step (random seen/unseen pixel
   labels, z ~ N(0, I), C's cross-entropy) for some iterations. By default only the new rows of
   C learn and G is frozen: the old classes' logits stay exactly, and G, which has no real
   features here to keep it close to the real ones (the training step's job), cannot drift.
   Otherwise all of C (and optionally G, with its adversarial term) learns, as in the paper's
   finetuning step; on the built-in data that costs the other classes tens of IoU points
   (README). E and CM are never touched;
4. :func:`save_model` writes a checkpoint with the new class list (``zero_shot_classes``), which
   ``build_model_from_checkpoint`` (and so every tool) rebuilds.
"""
import functools
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..data.embeddings import build_class_embeddings, load_class_embeddings, load_word_vectors
from ..engine.checkpoint import atomic_torch_save

__all__ = [
    "class_embeddings_for",
    "embedding_sources_of",
    "extend_classes",
    "finetune_on_generated",
    "fit_rows_on_real_features",
    "add_classes",
    "add_classes_from_config",
    "save_model",
]

logger = logging.getLogger(__name__)


def embedding_sources_of(cfg) -> Optional[List[str]]:
    """The word-vector sources recorded in the class-embedding table of ``cfg``'s dataset, if any."""
    from detectron2.data import MetadataCatalog

    path = cfg.MODEL.CAGNET.EMBEDDINGS_FILE
    names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
    if not path and names:
        path = getattr(MetadataCatalog.get(names[0]), "class_embeddings_file", "")
    if not path or not os.path.isfile(path):
        return None
    return load_class_embeddings(path)["sources"] or None


def class_embeddings_for(
    names: Sequence[str],
    sources: Sequence[str],
    model_table: torch.Tensor,
    model_names: Sequence[str],
    aliases: Optional[Mapping[str, str]] = None,
    check_source: bool = True,
) -> torch.Tensor:
    """(n, d) embeddings of ``names`` from the word-vector ``sources`` (e.g. ``["glove50"]``).

    Raises ValueError when their dimension differs from the model's table (d), or, with
    ``check_source``, when the model's own class names do not get back their rows from these
    sources (the table was built from something else).
    """
    vectors = [_word_vectors(s) for s in sources]
    dim = sum(v.dim for v in vectors)
    if dim != model_table.shape[1]:
        raise ValueError(
            f"The word vectors {list(sources)} are {dim}-d but the model's class embeddings are "
            f"{model_table.shape[1]}-d: build the new classes from the source(s) the model's table "
            "came from (--embeddings, repeated to concatenate sources)"
        )
    if check_source:
        try:
            old = build_class_embeddings(model_names, vectors, aliases)
        except KeyError as e:
            logger.warning(f"Cannot verify the embedding source on the model's own classes ({e}); going on")
        else:
            cos = (torch.from_numpy(old) * model_table.cpu()).sum(1)
            if cos.min().item() < 0.999:
                worst = int(cos.argmin())
                raise ValueError(
                    f"The model's class embeddings were not built from {list(sources)}: its class "
                    f"{model_names[worst]!r} gets a vector at cosine {cos[worst].item():.3f} from the "
                    "stored one. Pass the source(s) of the model's table (--embeddings) or disable the check"
                )
    try:
        table = build_class_embeddings(names, vectors, aliases)
    except KeyError as e:  # a word outside the vocabulary: the user's input, not a bug
        raise ValueError(e.args[0]) from e
    return torch.from_numpy(table)


@functools.lru_cache(maxsize=4)
def _word_vectors(source: str):
    return load_word_vectors(source)


@torch.no_grad()
def _imprinted_rows(model: nn.Module, new_ids: torch.Tensor, pixels: int = 512) -> torch.Tensor:
    """One classifier row per new class: the mean hidden activation of generated features of
    the class, scaled to the mean norm of the old rows."""
    heads, weight = model.heads, model.heads.classifier.weight.flatten(1)
    rows = []
    for c in new_ids.tolist():
        labels = torch.full((pixels,), c, dtype=torch.long, device=model.device)
        hidden = heads.hidden(model.generate_features(labels))
        rows.append(hidden.mean(0))
    rows = torch.stack(rows)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12) * weight.norm(dim=1).mean()


@torch.no_grad()
def extend_classes(model: nn.Module, names: Sequence[str], embeddings: torch.Tensor, init: str = "imprint") -> List[int]:
    """Append classes to ``model`` in place, as unseen classes; returns their indices.

    ``init``: "imprint" (see the module docstring) or "mean" (the mean of the old rows).
    """
    names = list(names)
    old_names = list(model.class_names or [str(i) for i in range(model.num_classes)])
    dup = sorted(set(names) & set(old_names)) + sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"Classes {dup} are already in the model or given twice")
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32).to(model.device)
    if embeddings.dim() != 2 or embeddings.shape != (len(names), model.class_embeddings.shape[1]):
        raise ValueError(
            f"Expected ({len(names)}, {model.class_embeddings.shape[1]}) embeddings for {names}, "
            f"got {tuple(embeddings.shape)}"
        )
    if init not in ("imprint", "mean"):
        raise ValueError(f"init must be 'imprint' or 'mean', got {init!r}")
    k, n = model.num_classes, len(names)
    new_ids = torch.arange(k, k + n, device=model.device)
    model.class_embeddings = torch.cat([model.class_embeddings, embeddings])
    model.unseen_ids = torch.cat([model.unseen_ids, new_ids])
    model.class_names = old_names + names

    old = model.heads.classifier
    new = nn.Conv2d(old.in_channels, k + n, 1).to(device=old.weight.device, dtype=old.weight.dtype)
    new.weight[:k] = old.weight
    new.bias[:k] = old.bias
    if init == "imprint":
        was_training = model.training
        model.eval()
        new.weight[k:] = _imprinted_rows(model, new_ids).view(n, -1, 1, 1)
        model.train(was_training)
    else:
        new.weight[k:] = old.weight.mean(0, keepdim=True)
    new.bias[k:] = old.bias.mean()
    model.heads.classifier = new
    return new_ids.tolist()


def finetune_on_generated(
    model: nn.Module,
    iters: int,
    lr: float,
    optimizer: str = "ADAM",
    train_generator: bool = True,
    betas=(0.9, 0.999),
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    pixels: Optional[int] = None,
    trainable_rows: Optional[Sequence[int]] = None,
    log_period: int = 50,
) -> List[Dict[str, float]]:
    """``iters`` finetuning steps of ``model`` (its ``sample_finetune_labels``,
    ``generate_features`` and ``finetuning_losses``) on ``pixels`` generated pixels each (default:
    the model's ``finetune_pixels``). The optimiser holds C (the shared conv and the classifier
    conv) and, with ``train_generator``, G; E, CM and D's own conv get no update. With
    ``trainable_rows`` (class indices, e.g. the added classes) only those rows of the classifier
    conv learn: the shared conv and the other rows stay, so the other classes' logits do not
    change. Returns the losses of each step."""
    heads = model.heads
    params = list(heads.classifier.parameters())
    if trainable_rows is None:
        params += list(heads.shared.parameters())
    if train_generator:
        params += list(model.generator.parameters())
    if optimizer.upper() == "ADAM":
        opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    elif optimizer.upper() == "SGD":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'ADAM' or 'SGD', got {optimizer!r}")
    frozen = [p for p in model.parameters() if all(p is not q for q in params)]
    saved = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    was_training = model.training
    model.train()
    # E and CM do not run in this step; eval mode also guarantees their BN statistics stay.
    model.backbone.eval()
    model.contextual_module.eval()
    hooks = []
    if trainable_rows is not None:
        mask = torch.zeros(heads.num_classes, device=model.device)
        mask[torch.as_tensor(list(trainable_rows), dtype=torch.long, device=model.device)] = 1.0
        hooks = [heads.classifier.weight.register_hook(lambda g: g * mask.view(-1, 1, 1, 1)),
                 heads.classifier.bias.register_hook(lambda g: g * mask)]
    history = []
    cpu_rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for it in range(iters):
            labels = model.sample_finetune_labels(pixels)
            losses = model.finetuning_losses(model.generate_features(labels), labels)
            if not train_generator:
                losses = {k: v for k, v in losses.items() if k != "loss_adv_generated"}
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise FloatingPointError(f"Loss became {total.item()} at finetuning iteration {it}: {losses}")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            history.append({k: v.item() for k, v in losses.items()})
            if log_period and ((it + 1) % log_period == 0 or it + 1 == iters):
                logger.info(f"finetuning {it + 1}/{iters}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()))
    finally:
        for h in hooks:
            h.remove()
        for p, flag in zip(frozen, saved):
            p.requires_grad_(flag)
        model.train(was_training)
        torch.random.set_rng_state(cpu_rng)
    return history


def fit_rows_on_real_features(
    model: nn.Module,
    rows: Sequence[int],
    features: torch.Tensor,
    labels: torch.Tensor,
    iters: int = 1000,
    lr: float = 1e-3,
    pixels: int = 8192,
    seed: int = 0,
) -> None:
    """Fit only the classifier ``rows`` (weights and biases) of ``model`` on *real* CM features
    (P, l) with class labels (P,), by C's cross-entropy; all else stays. Not a way to add classes
    (it needs labelled images of them): the upper bound that a row learned from generated features
    can be compared with (tools/analysis/add_class_experiment.py --real-row-check). Call it in eval mode."""
    heads = model.heads
    with torch.no_grad():
        hidden = heads.hidden(features)
    rows = torch.as_tensor(list(rows), dtype=torch.long, device=features.device)
    weight, bias = heads.classifier.weight.detach().flatten(1).clone(), heads.classifier.bias.detach().clone()
    new_w, new_b = weight[rows].clone().requires_grad_(True), bias[rows].clone().requires_grad_(True)
    opt = torch.optim.Adam([new_w, new_b], lr=lr)
    gen = torch.Generator(device=features.device).manual_seed(seed)
    for _ in range(iters):
        idx = torch.randint(hidden.shape[0], (min(pixels, hidden.shape[0]),), generator=gen, device=features.device)
        w, b = weight.index_put((rows,), new_w), bias.index_put((rows,), new_b)
        loss = nn.functional.cross_entropy(hidden[idx] @ w.T + b, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        heads.classifier.weight[rows] = new_w.view(len(rows), *heads.classifier.weight.shape[1:])
        heads.classifier.bias[rows] = new_b


def add_classes(
    model: nn.Module,
    names: Sequence[str],
    embeddings: torch.Tensor,
    *,
    iters: int = 1000,
    lr: float = 1e-3,
    init: str = "mean",
    seed: int = 0,
    keep_old_classes: bool = True,
    train_generator: bool = False,
    **finetune_kwargs,
) -> Dict:
    """:func:`extend_classes` then :func:`finetune_on_generated`; returns a summary. With
    ``keep_old_classes`` (default) only the new rows of C learn, so the old classes' logits stay
    exactly as they were; otherwise all of C (and with ``train_generator`` also G) learns, as in
    the paper's finetuning step."""
    old_k = model.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_ids = extend_classes(model, names, embeddings, init=init)
    if keep_old_classes:
        finetune_kwargs["trainable_rows"] = new_ids
    history = (
        finetune_on_generated(model, iters, lr, seed=seed, train_generator=train_generator, **finetune_kwargs)
        if iters > 0 else []
    )
    model.eval()
    return {
        "added_class_names": list(names),
        "added_class_ids": new_ids,
        "previous_num_classes": old_k,
        "iters": iters,
        "lr": lr,
        "init": init,
        "pixels_per_iter": int(finetune_kwargs.get("pixels") or model.finetune_pixels),
        "keep_old_classes": keep_old_classes,
        "train_generator": train_generator,
        "final_losses": history[-1] if history else {},
    }


def save_model(model: nn.Module, path: str, **extra) -> None:
    """Write ``{"model": state_dict, "zero_shot_classes": ..., **extra}`` atomically (the format
    of ``AtomicCheckpointer``, without touching any ``last_checkpoint`` tag)."""
    data = {"model": model.state_dict(), "zero_shot_classes": model.zero_shot_classes(), **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_torch_save(data, path)


def _config_aliases(cfg) -> Dict[str, str]:
    """Aliases of the class set of ``cfg``'s dataset ("tvmonitor" -> "tv monitor")."""
    from detectron2.data import MetadataCatalog

    from ..data.catalog import CLASS_SETS

    names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
    if not names:
        return {}
    meta = MetadataCatalog.get(names[0])
    key = getattr(meta, "class_set", None)
    if key in CLASS_SETS:
        return dict(CLASS_SETS[key].aliases)
    return dict(getattr(meta, "class_aliases", None) or {})  # e.g. register_without_classes


def add_classes_from_config(
    cfg,
    weights: str,
    names: Sequence[str],
    output: str,
    *,
    sources: Optional[Sequence[str]] = None,
    aliases: Optional[Mapping[str, str]] = None,
    iters: int = 1000,
    lr: float = 1e-3,
    init: str = "mean",
    train_generator: bool = False,
    check_source: bool = True,
    seed: int = 0,
    pixels: Optional[int] = None,
    keep_old_classes: bool = True,
):
    """What ``tools/add_classes.py`` does: load ``weights`` (with its own class list), add
    ``names`` with embeddings from ``sources`` (default: those of ``cfg``'s table, else glove50),
    finetune on generated features with Adam (whatever optimiser trained the model: only a few
    rows of C learn) and save to ``output``. Returns (model, summary)."""
    from ..modeling import build_model_from_checkpoint

    model = build_model_from_checkpoint(cfg, weights)
    sources = list(sources or embedding_sources_of(cfg) or ["glove50"])
    all_aliases = {**_config_aliases(cfg), **(aliases or {})}
    embeddings = class_embeddings_for(names, sources, model.class_embeddings, model.class_names, all_aliases,
                                      check_source=check_source)
    summary = add_classes(
        model, names, embeddings, iters=iters, lr=lr, init=init, seed=seed, train_generator=train_generator,
        pixels=pixels, keep_old_classes=keep_old_classes,
    )
    summary.update(embedding_sources=sources, base_weights=str(weights))
    save_model(model, output, added_classes=summary)
    logger.info(f"Added {list(names)} (ids {summary['added_class_ids']}) from {sources}; {model.num_classes} classes "
                f"now; final losses {summary['final_losses']}; wrote {output}")
    return model, summary
