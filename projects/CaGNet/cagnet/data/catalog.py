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


# =====================================================================================
# Real datasets (facts: shared/reference/datasets.md). Raw label values, class names in the
# official spelling, the unseen splits and the lookup tables that the prepare scripts
# (datasets/prepare_*.py) and the registrations (data/datasets/register_*.py) share.
# =====================================================================================

# Names that are not words of a general vocabulary (GloVe, word2vec, fastText): the words looked
# up instead. Names with "-" or "_" need no alias ("wall-concrete" -> "wall", "concrete").
NAME_ALIASES: Dict[str, str] = {
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "diningtable": "dining table",
    "playingfield": "playing field",
    "waterdrops": "water drops",
}


def _aliases_for(names: Sequence[str]) -> Dict[str, str]:
    return {n: NAME_ALIASES[n] for n in names if n in NAME_ALIASES}


def lut_from_pairs(pairs, size: int = 256, default: int = 255):
    """A uint8 lookup table of ``size`` entries: ``lut[src] = dst`` for each pair, else ``default``."""
    import numpy as np

    lut = np.full(size, default, dtype=np.uint8)
    for src, dst in pairs:
        lut[src] = dst
    return lut


# ---------------------------------------------------------------- COCO-stuff 164k
# Value v of the stuffthingmaps PNGs = COCO category id - 1 (cocostuff labels.txt, ids 1..182);
# 255 = unlabeled. COCO never annotates the 11 thing ids below (value = id - 1).
COCO_STUFF_182_NAMES: Tuple[str, ...] = (
    # things, values 0..90
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window",
    "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    # stuff, values 91..181
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_UNUSED_VALUES: Tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# SPNet's unseen split (raw value: name): 20 cow, 24 giraffe, 32 suitcase, 33 frisbee,
# 40 skateboard, 56 carrot, 86 scissors, 99 cardboard, 105 clouds, 123 grass, 144 playingfield,
# 147 river, 148 road, 168 tree, 171 wall-concrete.
COCO_STUFF_SPNET_UNSEEN: Tuple[str, ...] = (
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
)
_COCO_STUFF_VALUES = tuple(v for v in range(182) if v not in COCO_STUFF_UNUSED_VALUES)

COCO_STUFF_171 = add_class_set(
    ZeroShotClassSet(
        key="coco_stuff_171",
        class_names=tuple(COCO_STUFF_182_NAMES[v] for v in _COCO_STUFF_VALUES),
        unseen_names=COCO_STUFF_SPNET_UNSEEN,
        raw_ids=_COCO_STUFF_VALUES,  # stuffthingmaps values; the prepared PNGs hold 0..170
        aliases=_aliases_for(COCO_STUFF_182_NAMES),
    )
)


def coco_stuff_raw_lut():
    """stuffthingmaps value -> contiguous class 0..170 (unused ids, 182..254 and 255 -> 255)."""
    return COCO_STUFF_171.raw_to_contiguous_lut()


# ---------------------------------------------------------------- Pascal-VOC 2012 + SBD
# Values 1..20 of SegmentationClass(Aug); 0 = background, 255 = boundary / ignore.
PASCAL_VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# Prepared VOC labels keep the raw values (0 background, 1..20, 255); each setting reads them
# through its class set's raw_to_contiguous_lut().
PASCAL_VOC_20 = add_class_set(
    ZeroShotClassSet(
        key="pascal_voc_20",  # SPNet / CaGNet paper: background ignored, 5 unseen (raw 16..20)
        class_names=PASCAL_VOC_CLASSES,
        unseen_names=("pottedplant", "sheep", "sofa", "train", "tvmonitor"),
        raw_ids=tuple(range(1, 21)),
        aliases=_aliases_for(PASCAL_VOC_CLASSES),
    )
)
PASCAL_VOC_21_ZS3 = add_class_set(
    ZeroShotClassSet(
        key="pascal_voc_21_zs3",  # ZS3Net setting: background is a seen class
        class_names=("background",) + PASCAL_VOC_CLASSES,
        unseen_names=("cow", "motorbike", "aeroplane", "sofa"),
        raw_ids=tuple(range(0, 21)),
        aliases=_aliases_for(PASCAL_VOC_CLASSES),
    )
)


def pascal_voc_raw_lut():
    """SegmentationClass(Aug) value -> prepared value: 0..20 kept, anything else -> 255."""
    return lut_from_pairs((v, v) for v in range(21))


# ---------------------------------------------------------------- Pascal-Context
# The standard 59 classes (values 1..59 of the 59-class label maps; 0 = background, i.e. every
# other Context class and unlabeled). Their order is alphabetical, as in the full 459-class
# labels.txt, whose ids they have below (the Detail API / PyTorch-Encoding / mmsegmentation
# mapping of trainval_merged.json and of the LabelMap in trainval/*.mat).
PASCAL_CONTEXT_59_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water",
    "window", "wood",
)
PASCAL_CONTEXT_459_IDS_OF_59: Tuple[int, ...] = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
    115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326,
    347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)
PASCAL_CONTEXT_NUM_FULL_CLASSES = 459
# The paper's (SPNet's) 33 classes in their raw-id order 1..33 (0 = unlabeled): the 20 VOC
# classes in VOC order, then 13 stuff classes. "diningtable" is the 59-class "table".
PASCAL_CONTEXT_33_CLASSES: Tuple[str, ...] = PASCAL_VOC_CLASSES + (
    "sky", "grass", "ground", "road", "building", "tree", "water", "mountain", "wall", "floor",
    "track", "keyboard", "ceiling",
)
_CONTEXT_33_TO_59_NAME = {"diningtable": "table"}


def _context_59_value(name: str) -> int:
    return PASCAL_CONTEXT_59_CLASSES.index(_CONTEXT_33_TO_59_NAME.get(name, name)) + 1


PASCAL_CONTEXT_33 = add_class_set(
    ZeroShotClassSet(
        key="pascal_context_33",  # SPNet / CaGNet paper; other Context classes -> ignore
        class_names=PASCAL_CONTEXT_33_CLASSES,
        unseen_names=("cow", "motorbike", "sofa", "cat"),
        raw_ids=tuple(_context_59_value(n) for n in PASCAL_CONTEXT_33_CLASSES),  # 59-class values
        aliases=_aliases_for(PASCAL_CONTEXT_33_CLASSES),
    )
)
PASCAL_CONTEXT_60_ZS3 = add_class_set(
    ZeroShotClassSet(
        key="pascal_context_60_zs3",  # ZS3Net setting: background (value 0) is a seen class
        class_names=("background",) + PASCAL_CONTEXT_59_CLASSES,
        unseen_names=("cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor",
                      "keyboard", "aeroplane"),
        raw_ids=tuple(range(0, 60)),
        aliases=_aliases_for(PASCAL_CONTEXT_59_CLASSES),
    )
)


def pascal_context_459_to_59_lut():
    """Full 459-class id (0 = unlabeled) -> 59-class value (0 = background: unlabeled and every
    class outside the 59). A (460,) uint8 table."""
    return lut_from_pairs(
        ((i, v + 1) for v, i in enumerate(PASCAL_CONTEXT_459_IDS_OF_59)),
        size=PASCAL_CONTEXT_NUM_FULL_CLASSES + 1,
        default=0,
    )


# Which raw split feeds each registered split, per dataset.
DATASET_SPLITS: Dict[str, Dict[str, str]] = {
    "coco_stuff": {"train": "train2017", "val": "val2017"},  # 118,287 / 5,000 images
    "pascal_voc": {"train": "train_aug", "val": "val"},  # 10,582 (SBD-augmented) / 1,449
    "pascal_context": {"train": "train", "val": "val"},  # 4,998 / 5,105 (VOC 2010)
}

__all__ += [
    "NAME_ALIASES", "lut_from_pairs", "DATASET_SPLITS",
    "COCO_STUFF_182_NAMES", "COCO_STUFF_UNUSED_VALUES", "COCO_STUFF_SPNET_UNSEEN", "COCO_STUFF_171",
    "coco_stuff_raw_lut",
    "PASCAL_VOC_CLASSES", "PASCAL_VOC_20", "PASCAL_VOC_21_ZS3", "pascal_voc_raw_lut",
    "PASCAL_CONTEXT_59_CLASSES", "PASCAL_CONTEXT_459_IDS_OF_59", "PASCAL_CONTEXT_33_CLASSES",
    "PASCAL_CONTEXT_33", "PASCAL_CONTEXT_60_ZS3", "PASCAL_CONTEXT_NUM_FULL_CLASSES",
    "pascal_context_459_to_59_lut",
]
