# Copyright (c) CaGNet-D2 contributors.
"""Class sets of the zero-shot datasets: names in contiguous-index order and the unseen split.

Every registered dataset takes its classes from a :class:`ZeroShotClassSet` defined here (or, for
the built-in dataset, in ``synthetic_scenes``), so names, seen and unseen indices and aliases
exist in exactly one place and flow into ``MetadataCatalog``.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["ZeroShotClassSet", "CLASS_SETS", "add_class_set", "get_class_set"]


@dataclass(frozen=True)
class ZeroShotClassSet:
    """Classes of one zero-shot setting.

    Attributes:
        key: short identifier, also the stem of its class-embedding files ("pascal_voc_20").
        class_names: names in contiguous-index order (index = value in prepared label PNGs).
        unseen_names: the unseen classes (names from ``class_names``).
        raw_ids: raw label value of each class in the original annotation files (None: contiguous).
        aliases: words to look up for names that are not plain words ("tvmonitor" -> "tv monitor").
    """

    key: str
    class_names: Tuple[str, ...]
    unseen_names: Tuple[str, ...]
    raw_ids: Optional[Tuple[int, ...]] = None
    aliases: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{self.key}: duplicate class names")
        unknown = sorted(set(self.unseen_names) - set(self.class_names))
        if unknown:
            raise ValueError(f"{self.key}: unseen classes {unknown} are not among its classes")
        if self.raw_ids is not None and len(self.raw_ids) != len(self.class_names):
            raise ValueError(f"{self.key}: {len(self.raw_ids)} raw ids for {len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def unseen_ids(self) -> List[int]:
        unseen = set(self.unseen_names)
        return [i for i, n in enumerate(self.class_names) if n in unseen]

    @property
    def seen_ids(self) -> List[int]:
        unseen = set(self.unseen_names)
        return [i for i, n in enumerate(self.class_names) if n not in unseen]

    @property
    def seen_names(self) -> List[str]:
        return [self.class_names[i] for i in self.seen_ids]

    def raw_to_contiguous_lut(self, ignore_label: int = 255):
        """A 256-entry uint8 lookup table: raw label value -> contiguous index (else ignore)."""
        import numpy as np

        lut = np.full(256, ignore_label, dtype=np.uint8)
        raw = self.raw_ids if self.raw_ids is not None else range(self.num_classes)
        for contiguous, r in enumerate(raw):
            lut[r] = contiguous
        return lut


# Every class set by key; dataset modules add theirs on import.
CLASS_SETS: Dict[str, ZeroShotClassSet] = {}


def add_class_set(class_set: ZeroShotClassSet) -> ZeroShotClassSet:
    existing = CLASS_SETS.get(class_set.key)
    if existing is not None and existing != class_set:
        raise ValueError(f"A different class set {class_set.key!r} is already defined")
    CLASS_SETS[class_set.key] = class_set
    return class_set


def get_class_set(key: str) -> ZeroShotClassSet:
    if key not in CLASS_SETS:
        raise KeyError(f"Unknown class set {key!r}; known: {sorted(CLASS_SETS)}")
    return CLASS_SETS[key]
