# Copyright (c) CaGNet-D2 contributors.
"""Self-training (+ST, ZS3Net's rule) for any of the project's models.

A self-training run continues a trained model (``MODEL.WEIGHTS``). Before its first iteration the
model labels the training set:

1. every training image is segmented at full resolution (test mapper, no augmentation);
2. candidates are the pixels that the training labels ignore (after the seen-only lookup table:
   unseen, unlabelled and boundary pixels) and that the model assigns to an unseen class;
3. per unseen class u, the top p percent (``MODEL.SELF_TRAINING.TOP_PERCENT``) most confident
   of its candidates over the whole training set become pseudo labels u. Confidence is the
   log-odds of the softmax probability of the predicted class, ``l_u - logsumexp(l_others)``
   (same order as the probability, without its saturation at 1). The cut-off is found with a
   per-class histogram over a 20-bit order-preserving key of that score (two passes, memory
   independent of the dataset size); pixels tied with the cut-off are left out, so a class never
   gets more than p percent of its candidates.

The result, seen labels plus pseudo labels in ignored pixels only, is written as one PNG per
training image under ``OUTPUT_DIR/pseudo_labels`` (the dataset's label files are never touched)
and read with the training augmentation and no lookup table. ``summary.json`` (written last)
records thresholds and counts; a resumed run reuses the labels instead of relabelling with a
half-trained model. Generators see pseudo-labelled pixels as pixels of their class: they are
conditioned on that class's embedding.
"""
import json
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm

from ..data.build import build_resumable_train_loader
from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper, training_label_lut
from ..data.file_checks import check_label_values, class_index_table, label_value_table
from ..evaluation.zero_shot_evaluator import load_label_map
from ..utils.atomic_file import atomic_write, atomic_write_with
from .trainer import CaGNetTrainer

__all__ = [
    "SelfTrainingMixin",
    "CaGNetSelfTrainingTrainer",
    "pixel_confidence",
    "score_keys",
    "key_thresholds",
    "apply_pseudo_labels",
    "select_pseudo_labels",
    "pseudo_labelled_records",
]

logger = logging.getLogger(__name__)

KEY_BITS = 20
NUM_KEYS = 1 << KEY_BITS
SUMMARY = "summary.json"


# ---------------------------------------------------------------------- the selection rule
def pixel_confidence(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, H, W) logits -> predicted class (H, W) and its confidence
    ``l_pred - logsumexp(l_other)`` (the log-odds of its softmax probability)."""
    top, pred = logits.max(dim=0)
    others = logits.scatter(0, pred[None], float("-inf"))
    return pred, top - torch.logsumexp(others, dim=0)


def score_keys(score: np.ndarray) -> np.ndarray:
    """Order-preserving integer keys in [0, 2^20) of float32 scores (their top 20 bits, with the
    sign handled), so that a histogram over keys ranks scores."""
    bits = np.ascontiguousarray(score, dtype=np.float32).view(np.uint32)
    bits = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    return (bits >> np.uint32(32 - KEY_BITS)).astype(np.int64)


def key_thresholds(counts: np.ndarray, top_percent: float) -> np.ndarray:
    """Per class (rows of ``counts``, histograms over keys), the smallest key t such that at most
    ``floor(top_percent / 100 * candidates)`` candidates have a key >= t (NUM_KEYS: none)."""
    out = np.full(counts.shape[0], NUM_KEYS, dtype=np.int64)
    for i, hist in enumerate(counts):
        k = int(np.floor(top_percent / 100.0 * hist.sum() + 1e-9))
        if k == 0:
            continue
        at_or_above = np.cumsum(hist[::-1])[::-1]  # [b]: candidates with key >= b
        ok = np.nonzero(at_or_above <= k)[0]
        out[i] = ok[0] if ok.size else NUM_KEYS
    return out


def apply_pseudo_labels(train_label: np.ndarray, pred: np.ndarray, keys: np.ndarray, unseen_ids: Sequence[int],
                        thresholds: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """Training labels with ignored pixels predicted as an unseen class, at or above that class's
    threshold, set to it. ``thresholds[j]`` belongs to ``unseen_ids[j]``."""
    table = np.full(int(max(pred.max(initial=0), max(unseen_ids, default=0))) + 1, NUM_KEYS + 1, dtype=np.int64)
    table[list(unseen_ids)] = thresholds
    fill = (train_label == ignore_label) & (keys >= table[pred])
    out = train_label.copy()
    out[fill] = pred[fill]
    return out


class _UnseenHistograms:
    """Histograms of candidate keys per unseen class, filled in buffered bincounts."""

    def __init__(self, unseen_ids: Sequence[int], num_classes: int):
        self.position = np.full(num_classes, -1, dtype=np.int64)
        self.position[list(unseen_ids)] = np.arange(len(unseen_ids))
        self.counts = np.zeros((len(unseen_ids), NUM_KEYS), dtype=np.int64)
        self._buffer: List[np.ndarray] = []
        self._buffered = 0

    def add(self, train_label, pred, keys, ignore_label):
        pos = self.position[pred]
        cand = (train_label == ignore_label) & (pos >= 0)
        flat = pos[cand] * NUM_KEYS + keys[cand]
        self._buffer.append(flat)
        self._buffered += flat.size
        if self._buffered > 1 << 23:
            self.flush()

    def flush(self):
        if self._buffer:
            flat = np.concatenate(self._buffer)
            self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        self._buffer, self._buffered = [], 0
        return self.counts


def select_pseudo_labels(train_labels: Sequence[np.ndarray], logits: Sequence[torch.Tensor], unseen_ids: Sequence[int],
                         top_percent: float, ignore_label: int = 255) -> List[np.ndarray]:
    """The whole rule on in-memory inputs (the training pass streams the same steps)."""
    num_classes = logits[0].shape[0]
    hist = _UnseenHistograms(unseen_ids, num_classes)
    preds = []
    for label, logit in zip(train_labels, logits):
        pred, score = pixel_confidence(logit)
        pred, keys = pred.numpy(), score_keys(score.numpy())
        preds.append((pred, keys))
        hist.add(label, pred, keys, ignore_label)
    thresholds = key_thresholds(hist.flush(), top_percent)
    return [apply_pseudo_labels(label, p, k, unseen_ids, thresholds, ignore_label) for label, (p, k) in zip(train_labels, preds)]


# ---------------------------------------------------------------------- labelling the training set
def _predictions(model, records, indices, mapper, lut, batch_size, label_values) -> Iterator[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(index, prediction, confidence keys, training label) of each record, in order.
    ``label_values``: (valid-value table, its description) of the label files."""
    with inference_context(model), torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            outputs = model([mapper(records[i]) for i in chunk])
            for i, out in zip(chunk, outputs):
                pred, score = pixel_confidence(out["sem_seg"].float())
                pred, keys = pred.cpu().numpy(), score_keys(score.cpu().numpy())
                path = records[i]["sem_seg_file_name"]
                raw = load_label_map(path, dtype=np.uint8)
                check_label_values(raw, label_values[0], path, label_values[1])
                label = lut[raw]
                if label.shape != pred.shape:
                    raise ValueError(f"{path}: label {label.shape} vs prediction {pred.shape}")
                yield i, pred, keys, label


def _write_png(path: str, label: np.ndarray) -> None:
    # A pseudo-label (a cache of the labelling pass): a full disk keeps the previous file, named.
    atomic_write_with(path, lambda tmp: Image.fromarray(label.astype(np.uint8)).save(tmp, format="PNG"), suffix=".tmp.png")


def _key_to_score(key: int) -> Optional[float]:
    """The smallest score with this key (for the summary)."""
    if key >= NUM_KEYS:
        return None
    bits = int(key) << (32 - KEY_BITS)
    bits = bits & 0x7FFFFFFF if bits & 0x80000000 else ~(bits | ((1 << (32 - KEY_BITS)) - 1)) & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def label_training_set(cfg, model, records: List[Dict], files: List[str]) -> Dict:
    """Writes the pseudo-labelled training labels to ``files`` and returns the summary."""
    st = cfg.MODEL.SELF_TRAINING
    metas = [MetadataCatalog.get(n) for n in cfg.DATASETS.TRAIN]
    lut = training_label_lut(metas)
    label_values = label_value_table(metas)
    unseen = model.unseen_ids.tolist()
    ignore = int(getattr(model, "ignore_value", 255))
    mapper = ZeroShotSemSegDatasetMapper(cfg, is_train=False)
    shard = list(range(comm.get_rank(), len(records), comm.get_world_size()))
    batch = max(1, st.IMS_PER_BATCH)

    hist = _UnseenHistograms(unseen, model.num_classes)
    for _, pred, keys, label in _predictions(model, records, shard, mapper, lut, batch, label_values):
        hist.add(label, pred, keys, ignore)
    counts = sum(comm.all_gather(hist.flush()))
    thresholds = key_thresholds(counts, st.TOP_PERCENT)

    selected = np.zeros(len(unseen), dtype=np.int64)
    for i, pred, keys, label in _predictions(model, records, shard, mapper, lut, batch, label_values):
        merged = apply_pseudo_labels(label, pred, keys, unseen, thresholds, ignore)
        new = merged != label
        selected += np.bincount(np.searchsorted(unseen, merged[new]), minlength=len(unseen))
        _write_png(files[i], merged)
    selected = sum(comm.all_gather(selected))
    names = getattr(model, "class_names", None) or [str(i) for i in range(model.num_classes)]
    return {
        "per_class": {
            names[u]: {
                "candidates": int(counts[j].sum()),
                "selected": int(selected[j]),
                "min_confidence": _key_to_score(int(thresholds[j])),
            }
            for j, u in enumerate(unseen)
        }
    }


def pseudo_labelled_records(cfg, model, resumed: bool) -> List[Dict]:
    """The training records with their pseudo-labelled label files (labelling first if needed)."""
    st = cfg.MODEL.SELF_TRAINING
    out_dir = os.path.join(cfg.OUTPUT_DIR, "pseudo_labels")
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    files = [os.path.join(out_dir, "labels", f"{i:07d}.png") for i in range(len(records))]
    expected = {
        "datasets": list(cfg.DATASETS.TRAIN),
        "num_images": len(records),
        "top_percent": float(st.TOP_PERCENT),
        "source_weights": cfg.MODEL.WEIGHTS,
    }
    path = os.path.join(out_dir, SUMMARY)
    summary = None
    if os.path.isfile(path):
        with open(path) as f:
            summary = json.load(f)
    if summary is None or any(summary.get(k) != v for k, v in expected.items()):
        if resumed:
            raise RuntimeError(
                f"This self-training run resumes from a checkpoint, but its pseudo labels ({path}) are "
                f"missing or were made differently ({expected}); they must come from the starting model "
                "(MODEL.WEIGHTS), not a half-trained one: start the run again in an empty OUTPUT_DIR"
            )
        if not cfg.MODEL.WEIGHTS:
            raise ValueError(
                "MODEL.SELF_TRAINING.ENABLED continues a trained model: set MODEL.WEIGHTS to its checkpoint "
                "(e.g. the model_final.pth of the run without self-training)"
            )
        if comm.is_main_process():
            os.makedirs(os.path.dirname(files[0]), exist_ok=True)
        comm.synchronize()
        logger.info(f"Self-training: labelling {len(records)} training images (top {st.TOP_PERCENT}% per unseen class)")
        summary = {**expected, **label_training_set(cfg, model, records, files)}
        if comm.is_main_process():
            with atomic_write(path, "w") as f:
                json.dump(summary, f, indent=1)
        comm.synchronize()
    logger.info("Self-training: pseudo labels per unseen class: " + ", ".join(
        f"{n}: {c['selected']}/{c['candidates']}" for n, c in summary["per_class"].items()))
    return [dict(r, sem_seg_file_name=f) for r, f in zip(records, files)]


class SelfTrainingMixin:
    """For a trainer whose inner trainer reads batches from ``_data_loader_factory(seed, start)``:
    after the weights are loaded, switch its training data to the pseudo-labelled set."""

    def start_self_training(self, resumed: bool) -> None:
        cfg = self.cfg
        if not cfg.MODEL.SELF_TRAINING.ENABLED:
            return
        records = pseudo_labelled_records(cfg, self.model, resumed)
        # The files hold class indices with unseen GT already removed: no lookup table.
        kwargs = ZeroShotSemSegDatasetMapper.from_config(cfg, is_train=True)
        valid, source = class_index_table(self.model.num_classes, int(getattr(self.model, "ignore_value", 255)),
                                          "pseudo-label files")
        mapper = ZeroShotSemSegDatasetMapper(**{**kwargs, "label_lut": None, "label_values": valid,
                                                "label_values_source": source})

        def factory(seed, start_batch):
            return build_resumable_train_loader(cfg, mapper, seed=seed, start_batch=start_batch, records=records)

        self._trainer._data_loader_factory = factory
        self._trainer._data_loader_iter_obj = None


class CaGNetSelfTrainingTrainer(SelfTrainingMixin, CaGNetTrainer):
    """CaGNet+ST: CaGNet's training and finetuning steps, continued on the pseudo-labelled set.
    In the training step a pseudo-labelled pixel is a labelled pixel of its unseen class: C learns
    it, and G generates it from its latent code and its class's embedding."""

    def resume_or_load(self, resume=True):
        resumed = resume and self.checkpointer.has_checkpoint()
        super().resume_or_load(resume=resume)
        self.start_self_training(resumed)
