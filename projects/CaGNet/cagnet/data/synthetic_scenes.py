"""Procedurally generated "synthetic scenes" for zero-shot semantic segmentation.

Every image is a small outdoor-like scene: a background made of *stuff*
regions (sky above a wavy horizon, and grass / sand / water below it) with a
few *thing* objects painted on top.  A thing class is a combination of one
colour and one surface pattern, named in plain English ("red striped",
"blue checkered", ...).  The shape and size of an object are random and carry
no class information, so the class is fully determined by two local,
quickly-learnable cues: colour and texture.

Why zero-shot transfer is possible
----------------------------------
The thing classes form a COLOURS x TEXTURES grid.  The unseen classes are a
Latin-square "transversal" of that grid: exactly one cell per colour (row)
and one per texture (column).  Hence every colour and every texture is still
seen in training, each in ``len(TEXTURES) - 1`` (resp. ``len(COLOURS) - 1``)
different combinations, so a model cannot use an attribute value as a
shortcut for one particular class; it has to learn colour and texture as
separate factors.  The class embedding is the L2-normalised mean of the GloVe
vectors of the words of the name, i.e. (up to normalisation) the *sum* of a
colour vector and a texture vector.  A model that maps pixels into the word
space additively (colour part + texture part), which is what the seen
classes reward, therefore scores an unseen combination "red dotted" highly
on a red dotted object although it never saw a "red dotted" label.  The
stuff classes (all seen) give context and realistic clutter: the sky and the
water are blue, the grass is green and the sand is yellowish, so colour
alone is not enough to tell a thing from the background.

Word choice: colours and textures were picked among common GloVe-6B words
(all lowercase, all in the vocabulary) whose vectors separate well;
"solid" is used for an untextured object because its vector has a low
cosine (0.03-0.33) with the other texture words.  See REPORT.md for the checks.

On-disk format (``generate(root)``)::

    root/images/{train,val}/{stem}.jpg   RGB JPEG, quality 95
    root/labels/{train,val}/{stem}.png   uint8 PNG, contiguous class index
                                         over ALL classes (full ground truth,
                                         unseen included), 255 = ignore
    root/{train,val}.txt                 one stem per line
    root/meta.json                       version, seed, sizes, class names

The label maps contain the full ground truth; hiding the unseen classes
during training (mapping them to 255) is the job of the training code.
Generation is deterministic: the same arguments give byte-identical files.
Only numpy and OpenCV are needed.
"""
import json
import os
import shutil
import tempfile

import cv2
import numpy as np

__all__ = ["CLASSES", "COLOURS", "TEXTURES", "STUFF", "VERSION", "generate",
           "render_scene", "class_names", "unseen_class_ids"]

VERSION = 2
IGNORE_LABEL = 255

# Stuff classes (all seen).  The order here is the contiguous index order.
STUFF = ["sky", "grass", "sand", "water"]
# Thing attributes.  RGB values of the "light" (base) tone of each colour.
COLOURS = {
    "red": (205, 35, 35),
    "yellow": (240, 205, 30),
    "blue": (35, 75, 215),
    "pink": (245, 130, 190),
}
TEXTURES = ["striped", "dotted", "checkered", "solid"]
# Unseen cell of each colour row: UNSEEN_TEXTURE_OF[colour] is a permutation
# of TEXTURES (one unseen cell per row and per column).
UNSEEN_TEXTURE_OF = {
    "red": "dotted",
    "yellow": "checkered",
    "blue": "solid",
    "pink": "striped",
}


def _build_classes():
    classes = [{"name": s, "words": [s], "unseen": False, "kind": "stuff"}
               for s in STUFF]
    for colour in COLOURS:
        for texture in TEXTURES:
            classes.append({
                "name": f"{colour} {texture}",
                "words": [colour, texture],
                "unseen": UNSEEN_TEXTURE_OF[colour] == texture,
                "kind": "thing",
                "colour": colour,
                "texture": texture,
            })
    return classes


CLASSES = _build_classes()
_CLASS_ID = {c["name"]: i for i, c in enumerate(CLASSES)}
_THING_IDS = [i for i, c in enumerate(CLASSES) if c["kind"] == "thing"]


def class_names():
    return [c["name"] for c in CLASSES]


def unseen_class_ids():
    return [i for i, c in enumerate(CLASSES) if c["unseen"]]


# ---------------------------------------------------------------------------
# Stuff rendering.  Each function returns a float32 HxWx3 RGB image in [0,255]
# covering the whole canvas; the layout decides which pixels show it.
# ---------------------------------------------------------------------------
def _uniform(rng, low, high, size=None):
    return np.float32(rng.uniform(low, high, size))


_COORDS = {}


def _coords(h, w):
    """Cached float32 pixel coordinate grids (yy, xx)."""
    if (h, w) not in _COORDS:
        _COORDS[(h, w)] = tuple(g.astype(np.float32) for g in np.mgrid[0:h, 0:w])
    return _COORDS[(h, w)]


def _smooth_noise(rng, h, w, scale):
    """Gaussian-blurred white noise with unit standard deviation."""
    n = rng.standard_normal((h, w), dtype=np.float32)
    if scale > 0:
        n = cv2.GaussianBlur(n, (0, 0), scale)
    return n / (n.std() + 1e-6)


def _render_sky(rng, h, w):
    top = np.array([95, 155, 225], np.float32) + _uniform(rng, -15, 15, 3)
    bottom = np.array([185, 215, 245], np.float32) + _uniform(rng, -10, 10, 3)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    # Soft white clouds: thresholded large-scale noise.
    clouds = np.clip(_smooth_noise(rng, h, w, h / 10) - 0.6, 0, None)
    alpha = np.clip(clouds * rng.uniform(0.6, 1.2), 0, 0.85)[..., None]
    return img * (1 - alpha) + 250 * alpha


def _render_grass(rng, h, w):
    base = np.array([70, 140, 45], np.float32) + _uniform(rng, -15, 15, 3)
    blades = rng.standard_normal((h, w), dtype=np.float32)
    blades = cv2.blur(blades, (1, 5))  # short vertical strokes
    patches = _smooth_noise(rng, h, w, h / 12)
    shade = 1 + 0.25 * blades / (blades.std() + 1e-6) + 0.1 * patches
    return base * shade[..., None]


def _render_sand(rng, h, w):
    base = np.array([215, 190, 140], np.float32) + _uniform(rng, -12, 12, 3)
    yy, xx = _coords(h, w)
    ripples = np.sin((yy + 0.3 * xx) * rng.uniform(0.25, 0.45)
                     + 2 * _smooth_noise(rng, h, w, h / 16))
    grain = rng.standard_normal((h, w), dtype=np.float32)
    shade = 1 + 0.05 * ripples + 0.06 * grain
    return base * shade[..., None]


def _render_water(rng, h, w):
    base = np.array([40, 95, 165], np.float32) + _uniform(rng, -12, 12, 3)
    yy, xx = _coords(h, w)
    waves = np.sin(yy * rng.uniform(0.7, 1.1)
                   + 3 * _smooth_noise(rng, h, w, w / 8)
                   + 0.05 * xx)
    highlights = np.clip(waves - 0.55, 0, None) * 2.2  # thin bright crests
    img = base * (1 + 0.08 * _smooth_noise(rng, h, w, h / 10))[..., None]
    return img + highlights[..., None] * np.array([90, 100, 90], np.float32)


_STUFF_RENDERERS = {"sky": _render_sky, "grass": _render_grass,
                    "sand": _render_sand, "water": _render_water}


def _wavy_boundary(rng, length, mean, amplitude):
    """A smooth random curve of `length` samples around `mean`."""
    n = _smooth_noise(rng, 1, length + 32, 8)[0, 16:16 + length]
    return mean + amplitude * n


def _render_background(rng, h, w, image, label):
    """Paints the stuff layout: optional sky, then one or two ground kinds."""
    grounds = ["grass", "sand", "water"]
    yy, xx = _coords(h, w)
    ground_top = np.zeros(w, np.float32)
    if rng.random() < 0.8:  # a sky band above a wavy horizon
        horizon = _wavy_boundary(rng, w, rng.uniform(0.25, 0.5) * h, 0.05 * h)
        sky = yy < horizon[None, :]
        _paint_stuff(rng, "sky", sky, image, label)
        ground_top = horizon
    first = grounds[rng.integers(3)]
    _paint_stuff(rng, first, yy >= ground_top[None, :], image, label)
    if rng.random() < 0.5:  # a second ground region, e.g. a shore
        second = grounds[(grounds.index(first) + rng.integers(1, 3)) % 3]
        if rng.random() < 0.5:  # lower band
            edge = _wavy_boundary(rng, w, rng.uniform(0.6, 0.85) * h, 0.06 * h)
            region = yy >= np.maximum(edge, ground_top)[None, :]
        else:  # left or right part
            edge = _wavy_boundary(rng, h, rng.uniform(0.3, 0.7) * w, 0.08 * w)
            region = (xx < edge[:, None]) if rng.random() < 0.5 \
                else (xx >= edge[:, None])
            region &= yy >= ground_top[None, :]
        _paint_stuff(rng, second, region, image, label)


def _paint_stuff(rng, name, mask, image, label):
    h, w = mask.shape
    np.copyto(image, _STUFF_RENDERERS[name](rng, h, w), where=mask[..., None])
    label[mask] = _CLASS_ID[name]


# ---------------------------------------------------------------------------
# Things: random shape x colour x texture.
# ---------------------------------------------------------------------------
def _random_shape_mask(rng, h, w, size):
    """Boolean mask of an ellipse, a rotated rectangle or a smooth blob."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.2, 0.95) * h
    kind = rng.integers(3)
    if kind == 0:
        axes = (size * rng.uniform(0.6, 1.0), size * rng.uniform(0.45, 1.0))
        cv2.ellipse(mask, ((cx, cy), (2 * axes[0], 2 * axes[1]),
                           rng.uniform(0, 180)), 1, -1)
    elif kind == 1:
        box = ((cx, cy), (2 * size * rng.uniform(0.6, 1.0),
                          2 * size * rng.uniform(0.45, 0.9)),
               rng.uniform(0, 180))
        cv2.fillPoly(mask, [cv2.boxPoints(box).round().astype(np.int32)], 1)
    else:
        n = 12
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = size * (0.65 + 0.35 * np.convolve(
            np.tile(rng.uniform(0.0, 1.0, n), 3), np.ones(3) / 3, "same")[n:2 * n])
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(mask, [pts.round().astype(np.int32)], 1)
    return mask.astype(bool)


def _texture_pattern(rng, texture, yy, xx, scale):
    """Float map in [0,1] over the pixel coordinates (yy, xx): 1 where the
    dark tone of the pattern is shown.  Random orientation and phase."""
    if texture == "solid":
        return np.zeros(yy.shape, np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, 100)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + rng.uniform(0, 100)
    period = scale * rng.uniform(0.8, 1.2)
    if texture == "striped":
        return ((u / period) % 1.0 < 0.5).astype(np.float32)
    if texture == "checkered":
        cells = np.floor(u / period) + np.floor(v / period)
        return (cells % 2 == 0).astype(np.float32)
    if texture == "dotted":
        pu, pv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        return (pu ** 2 + pv ** 2 < 0.27 ** 2).astype(np.float32)
    raise ValueError(texture)


def _render_thing(rng, class_id, yy, xx, h, w, scale):
    """RGB surface (float32) of a thing at pixel coordinates (yy, xx)."""
    cls = CLASSES[class_id]
    light = np.array(COLOURS[cls["colour"]], np.float32) + _uniform(rng, -12, 12, 3)
    dark = light * np.float32(rng.uniform(0.3, 0.4))
    pattern = _texture_pattern(rng, cls["texture"], yy, xx, scale)[..., None]
    img = light * (1 - pattern) + dark * pattern
    # Mild directional shading so that a "solid" object is not perfectly flat.
    gx, gy = _uniform(rng, -0.15, 0.15, 2)
    img *= (1 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5))[..., None]
    return img


def _paint_things(rng, h, w, image, label):
    scale = max(4.0, 0.075 * min(h, w))  # texture period in pixels
    for _ in range(rng.integers(2, 5)):
        class_id = _THING_IDS[rng.integers(len(_THING_IDS))]
        size = rng.uniform(0.12, 0.26) * min(h, w)
        mask = _random_shape_mask(rng, h, w, size)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        # Render only inside the object's bounding box (speed).
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        yy, xx = _coords(h, w)
        surface = _render_thing(rng, class_id, yy[box], xx[box], h, w, scale)
        inside = mask[box]
        image[box][inside] = surface[inside]
        label[box][inside] = class_id


# ---------------------------------------------------------------------------
# Scene assembly and file writing.
# ---------------------------------------------------------------------------
def render_scene(rng, image_size):
    """Returns (RGB uint8 HxWx3 image, uint8 HxW label map)."""
    h = w = int(image_size)
    image = np.zeros((h, w, 3), np.float32)
    label = np.full((h, w), IGNORE_LABEL, np.uint8)
    _render_background(rng, h, w, image, label)
    _paint_things(rng, h, w, image, label)
    image *= rng.uniform(0.85, 1.15)  # global illumination
    image += 3 * rng.standard_normal(image.shape, dtype=np.float32)  # sensor noise
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def _image_rng(seed, split, index):
    split_id = {"train": 0, "val": 1}[split]
    return np.random.default_rng(np.random.SeedSequence([seed, split_id, index]))


def _write_split(tmp_root, split, count, seed, image_size):
    img_dir = os.path.join(tmp_root, "images", split)
    lbl_dir = os.path.join(tmp_root, "labels", split)
    os.makedirs(img_dir)
    os.makedirs(lbl_dir)
    stems = []
    for i in range(count):
        image, label = render_scene(_image_rng(seed, split, i), image_size)
        stem = f"{split}_{i:06d}"
        cv2.imwrite(os.path.join(img_dir, stem + ".jpg"),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(lbl_dir, stem + ".png"), label)
        stems.append(stem)
    with open(os.path.join(tmp_root, f"{split}.txt"), "w") as f:
        f.write("\n".join(stems) + "\n")


def generate(root, seed=0, num_train=2000, num_val=200, image_size=96,
             overwrite=False):
    """Writes the dataset to `root` (see the module docstring for the layout).

    Files are first written to a temporary sibling directory which is renamed
    to `root` at the end, so an existing `root` is always complete.  If `root`
    already exists it is kept unless `overwrite` is true.  Returns `root`.
    """
    root = os.path.abspath(root)
    if os.path.exists(root):
        if not overwrite:
            raise FileExistsError(f"{root} exists (pass overwrite=True)")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix="." + os.path.basename(root) + ".tmp-",
                                dir=parent)
    cv_threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)  # identical output regardless of thread count
        _write_split(tmp_root, "train", num_train, seed, image_size)
        _write_split(tmp_root, "val", num_val, seed, image_size)
        meta = {
            "generator": "synthetic_scenes", "version": VERSION, "seed": seed,
            "num_train": num_train, "num_val": num_val,
            "image_size": image_size, "ignore_label": IGNORE_LABEL,
            "classes": class_names(),
            "unseen_classes": [CLASSES[i]["name"] for i in unseen_class_ids()],
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


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    generate(a.root, a.seed, a.num_train, a.num_val, a.image_size, a.overwrite)
