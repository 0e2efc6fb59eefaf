# Copyright (c) CaGNet-D2 contributors.
"""Class lists that differ between a model and a dataset, matched by name.

* :func:`evaluate_by_class_name` scores a model on a dataset when the model's classes are a
  permutation, subset or superset of the dataset's: the logits are reordered by name
  (:class:`LogitsByClassName`); a dataset class that the model lacks can never be predicted
  (its IoU is 0), a model class that the dataset lacks is dropped from the arg-max.
* :func:`register_without_classes` registers a copy of a zero-shot dataset whose vocabulary lacks
  some classes: their pixels become ``ignore`` through the copy's ``label_lut`` (in training and
  evaluation) and the copy's class-embedding table lacks their rows, so a model trained on it has
  no output for them (the "open vocabulary" test of ``tools/analysis/add_class_experiment.py``).
"""
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.catalog import CLASS_SETS, ZeroShotClassSet
from ..data.dataset_mapper import dataset_label_lut
from ..data.embeddings import load_class_embeddings, save_class_embeddings

__all__ = [
    "class_index_map",
    "LogitsByClassName",
    "evaluate_by_class_name",
    "labels_to_model_classes",
    "register_without_classes",
    "slug",
]

logger = logging.getLogger(__name__)


def slug(text: str) -> str:
    """A name fragment for datasets and files: "red striped" -> "red_striped"."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()


def class_index_map(model_names: Sequence[str], dataset_names: Sequence[str]) -> List[int]:
    """For each dataset class, the index of the model's class of the same name, or -1."""
    if len(set(model_names)) != len(model_names):
        raise ValueError("The model's class names are not unique")
    index = {n: i for i, n in enumerate(model_names)}
    return [index.get(n, -1) for n in dataset_names]


class LogitsByClassName(nn.Module):
    """Wraps a segmentation model so that ``sem_seg`` logits follow a dataset's class order.

    Output channel j holds the model's logit of the class named ``dataset_names[j]``; a class
    the model does not know gets the lowest representable logit (it is never the arg-max).
    """

    def __init__(self, model: nn.Module, dataset_names: Sequence[str], model_names: Optional[Sequence[str]] = None):
        super().__init__()
        self.model = model
        model_names = list(model_names if model_names is not None else model.class_names)
        index = class_index_map(model_names, dataset_names)
        self.missing = [n for n, i in zip(dataset_names, index) if i < 0]
        self.extra = sorted(set(model_names) - set(dataset_names))
        if all(i < 0 for i in index):
            raise ValueError(f"The model's classes {model_names} share no name with the dataset's {list(dataset_names)}")
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long), persistent=False)
        self.train(model.training)  # wrapping must not switch the model's mode

    def forward(self, batched_inputs: List[Dict]):
        outputs = self.model(batched_inputs)
        for out in outputs:
            logits = out["sem_seg"]
            known = self.index >= 0
            mapped = logits.new_full((len(self.index),) + tuple(logits.shape[1:]), torch.finfo(logits.dtype).min)
            mapped[known] = logits[self.index[known].to(logits.device)]
            out["sem_seg"] = mapped
        return outputs


def labels_to_model_classes(label_file_values: np.ndarray, dataset_name: str, model_names: Sequence[str],
                            ignore_value: int = 255) -> np.ndarray:
    """A label map as stored in ``dataset_name``'s files -> class indices of a model's list (by
    name; the dataset's ``label_lut`` first). Classes the model lacks become ``ignore_value``."""
    meta = MetadataCatalog.get(dataset_name)
    index = class_index_map(list(model_names), list(meta.stuff_classes))
    to_model = np.full(256, ignore_value, dtype=np.int64)
    for dataset_id, model_id in enumerate(index):
        if model_id >= 0:
            to_model[dataset_id] = model_id
    return to_model[dataset_label_lut(meta)[np.asarray(label_file_values, dtype=np.uint8)]]


def evaluate_by_class_name(cfg, model: nn.Module, dataset_name: str, output_dir: Optional[str] = None) -> Dict:
    """The zero-shot metrics (``{"sem_seg": {...}}``) of ``model`` on ``dataset_name``, matching
    classes by name; seen and unseen groups are the dataset's."""
    from detectron2.evaluation import inference_on_dataset

    from ..engine import CaGNetTrainer
    from ..evaluation import ZeroShotSemSegEvaluator

    names = list(MetadataCatalog.get(dataset_name).stuff_classes)
    wrapped = LogitsByClassName(model, names)
    if wrapped.missing:
        logger.info(f"Classes of {dataset_name} that the model lacks (IoU 0): {wrapped.missing}")
    if wrapped.extra:
        logger.info(f"Classes of the model outside {dataset_name} (left out of the arg-max): {wrapped.extra}")
    loader = CaGNetTrainer.build_test_loader(cfg, dataset_name)
    evaluator = ZeroShotSemSegEvaluator(dataset_name, distributed=False, output_dir=output_dir)
    return inference_on_dataset(wrapped, loader, evaluator)


def register_without_classes(base_name: str, new_name: str, drop: Sequence[str], embeddings_dir: str):
    """Register ``new_name``: the records of ``base_name`` with the classes ``drop`` removed.

    Remaining classes keep their order (indices shift down) and their seen/unseen group; the
    labels of dropped classes map to ``ignore``. The class-embedding table without their rows is
    written to ``embeddings_dir``. Registering the same name again with the same classes does
    nothing. Returns the new metadata.
    """
    if base_name not in DatasetCatalog.list():
        raise KeyError(f"Dataset {base_name!r} is not registered")
    base = MetadataCatalog.get(base_name)
    names = list(base.stuff_classes)
    unknown = sorted(set(drop) - set(names))
    if unknown:
        raise ValueError(f"{unknown} are not classes of {base_name!r} ({names})")
    keep = [i for i, n in enumerate(names) if n not in set(drop)]
    kept_names = [names[i] for i in keep]
    if new_name in DatasetCatalog.list():
        meta = MetadataCatalog.get(new_name)
        if list(meta.stuff_classes) != kept_names:
            raise ValueError(f"{new_name!r} is already registered with other classes {list(meta.stuff_classes)}")
        return meta

    ignore = int(getattr(base, "ignore_label", 255))
    remap = np.full(256, ignore, dtype=np.uint8)
    for new_index, old_index in enumerate(keep):
        remap[old_index] = new_index
    label_lut = remap[dataset_label_lut(base)]
    unseen = set(base.unseen_class_ids)
    unseen_names = [names[i] for i in keep if i in unseen]

    base_key = getattr(base, "class_set", slug(base_name))
    key = f"{base_key}_minus_{'_'.join(slug(n) for n in drop)}"
    aliases = CLASS_SETS[base_key].aliases if base_key in CLASS_SETS else {}
    # Not added to the global CLASS_SETS (the registry of class sets with shipped tables).
    class_set = ZeroShotClassSet(key=key, class_names=tuple(kept_names), unseen_names=tuple(unseen_names),
                                 aliases={n: a for n, a in aliases.items() if n in kept_names})
    table = load_class_embeddings(base.class_embeddings_file, expected_names=names)
    embeddings_file = os.path.join(embeddings_dir, f"{key}.npz")
    save_class_embeddings(embeddings_file, kept_names, table["vectors"][keep], table["sources"] or ["unknown"],
                          class_set.aliases)

    DatasetCatalog.register(new_name, lambda: DatasetCatalog.get(base_name))
    fields = {k: v for k, v in base.as_dict().items() if k != "name"}
    fields.update(
        stuff_classes=kept_names,
        seen_class_ids=class_set.seen_ids,
        unseen_class_ids=class_set.unseen_ids,
        class_set=key,
        class_embeddings_file=embeddings_file,
        label_lut=tuple(int(v) for v in label_lut),
        class_aliases=dict(class_set.aliases),
        dropped_classes=list(drop),
        base_dataset=base_name,
    )
    fields.pop("stuff_colors", None)
    MetadataCatalog.get(new_name).set(**fields)
    return MetadataCatalog.get(new_name)
