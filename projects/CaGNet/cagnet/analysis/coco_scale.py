# Copyright (c) CaGNet-D2 contributors.
"""COCO-stuff 164k at full size, measured on a stand-in tree (``tools/analysis/measure_coco_scale.py``).

* :func:`build_stand_in`: the prepared layout that ``cagnet/data/datasets/register_coco_stuff.py``
  reads, with ``num_train`` + ``num_val`` names that are hard links to ``distinct`` real-size pairs
  (640x480 JPEGs of natural-looking random scenes at COCO's typical ~160 KB, label PNGs of the 171
  classes with a few percent ignore);
* :func:`tree_pss_mb` and :func:`run_measured`: wall time and peak memory (sum of PSS over the
  process tree, workers included, sampled from /proc; Linux) of a command;
* the steps, each meant to run in its own process and returning its figures as a dict:
  :func:`step_register`, :func:`step_loader`, :func:`step_score` (the Table-1 benchmark's
  scoring pass with a tiny model).
"""
import json
import os
import subprocess
import threading
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["NUM_TRAIN", "NUM_VAL", "TINY_MODEL_OPTS", "natural_image", "label_map", "build_stand_in",
           "tree_pss_mb", "run_measured", "load_coco_config", "step_register", "step_loader", "step_score"]

NUM_TRAIN, NUM_VAL = 118_287, 5_000  # COCO-stuff 164k: train2017, val2017
IGNORE = 255
TINY_MODEL_OPTS = [  # as tests/_dataset_helpers.py
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "50", "MODEL.DILATED_RESNET.NUM_BLOCKS", "[1,1,1,1]",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.ASPP_L.OUT_CHANNELS", "32",
    "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", "[32]", "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", "32",
    "MODEL.CAGNET.CHANNELS_LAST", "False",
]


# ---------------------------------------------------------------------- the stand-in tree
def natural_image(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """An RGB uint8 scene of ``label``'s size: per label region a colour, with 1/f-noise texture."""
    h, w = label.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))  # 1/f, as natural images
    colours = rng.uniform(20, 235, size=(256, 3))
    image = colours[label].astype(np.float64)
    for c in range(3):
        phase = np.exp(2j * np.pi * rng.random((h, w)))
        noise = np.real(np.fft.ifft2(amplitude * phase))
        image[..., c] += 40 * noise / noise.std()
    return np.clip(image, 0, 255).astype(np.uint8)


def label_map(rng: np.random.Generator, h: int = 480, w: int = 640, regions: int = 12) -> np.ndarray:
    """Voronoi regions of random classes 0..170; the left 3% of the columns 255 (unlabeled)."""
    ys, xs = rng.integers(0, h, regions), rng.integers(0, w, regions)
    yy, xx = np.mgrid[0:h, 0:w]
    nearest = np.argmin((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2, axis=-1)
    label = rng.integers(0, 171, regions).astype(np.uint8)[nearest]
    label[:, : int(0.03 * w)] = IGNORE
    return label


def _jpeg_near(path: str, image: np.ndarray, target_bytes: int = 160_000) -> Tuple[int, int]:
    """Save at the JPEG quality whose file size is closest to ``target_bytes``; (quality, bytes)."""
    from PIL import Image

    best = None
    for quality in range(70, 99, 2):
        Image.fromarray(image).save(path, format="JPEG", quality=quality)
        size = os.path.getsize(path)
        if best is None or abs(size - target_bytes) < abs(best[1] - target_bytes):
            best = (quality, size)
    Image.fromarray(image).save(path, format="JPEG", quality=best[0])
    return best


def build_stand_in(root: str, distinct: int, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL,
                   size: Tuple[int, int] = (480, 640), log=print) -> bool:
    """Build (or reuse) the stand-in tree under the datasets root ``root``; returns whether it was
    built (False: an identical one was already there). Train stems are 0..num_train-1, val stems
    start at 10**9, each a hard link to pair ``i % distinct``."""
    from PIL import Image

    from ..data.datasets.register_coco_stuff import coco_stuff_paths
    from ..data.register import PREPARED_MARKER, write_prepared_marker

    paths = coco_stuff_paths(root)
    info = {"stand_in": True, "distinct": distinct, "splits": {"train": num_train, "val": num_val}}
    if tuple(size) != (480, 640):
        info["size"] = list(size)
    marker = os.path.join(paths["prepared"], PREPARED_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == info:
                log(f"stand-in tree: {root} (exists)")
                return False
    start = time.perf_counter()
    sources = os.path.join(root, "stand_in_sources")
    os.makedirs(sources, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs, sizes = [], []
    for i in range(distinct):
        label = label_map(rng, *size)
        jpg, png = os.path.join(sources, f"{i}.jpg"), os.path.join(sources, f"{i}.png")
        quality, nbytes = _jpeg_near(jpg, natural_image(rng, label))
        Image.fromarray(label).save(png)
        pairs.append((jpg, png))
        sizes.append((nbytes, os.path.getsize(png), quality))
    for split, n, offset in (("train", num_train, 0), ("val", num_val, 10**9)):
        for d in (paths["images"][split], paths["labels"][split]):
            os.makedirs(d, exist_ok=True)
        stems = [f"{offset + i:012d}" for i in range(n)]
        for i, stem in enumerate(stems):
            jpg, png = pairs[i % distinct]
            for src, dst in ((jpg, os.path.join(paths["images"][split], stem + ".jpg")),
                             (png, os.path.join(paths["labels"][split], stem + ".png"))):
                if not os.path.exists(dst):
                    os.link(src, dst)
        with open(paths["split_files"][split], "w") as f:
            f.write("".join(s + "\n" for s in stems))
    write_prepared_marker(paths["prepared"], info)
    log(f"stand-in tree: {root}, {num_train} + {num_val} names -> {distinct} pairs, built in "
        f"{time.perf_counter() - start:.0f} s; JPEG {np.mean([s[0] for s in sizes]) / 1e3:.0f} KB "
        f"(quality {min(s[2] for s in sizes)}-{max(s[2] for s in sizes)}), label PNG "
        f"{np.mean([s[1] for s in sizes]) / 1e3:.1f} KB on average, {size[1]}x{size[0]}")
    return True


# ---------------------------------------------------------------------- memory of a process tree
def _children(pid: int) -> List[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mb(pid: int) -> float:
    """The PSS of ``pid`` and all its descendants, in MB (0 where /proc cannot tell)."""
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += _pss_kb(p)
        todo.extend(_children(p))
    return total / 1024


def run_measured(cmd: Sequence[str], env: Dict[str, str], cwd: str = None, interval: float = 0.2):
    """(wall seconds, peak tree PSS in MB, stdout + stderr) of a command; raises SystemExit with the
    command and the end of its output when it fails."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))
            time.sleep(interval)

    start = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - start
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{out[-5000:]}")
    return wall, peak[0], out


# ---------------------------------------------------------------------- the steps (each in its own process)
def load_coco_config(config_file: str, opts: Sequence = ()):
    from detectron2.config import get_cfg

    from ..config import add_cagnet_config

    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def step_register(datasets: Sequence[str] = ("coco_stuff_171_train", "coco_stuff_171_val")) -> Dict:
    """DatasetCatalog.get of each dataset (every file checked): record counts, seconds, and the
    memory the records take."""
    from detectron2.data import DatasetCatalog

    before = tree_pss_mb(os.getpid())
    t0 = time.perf_counter()
    records = {name: DatasetCatalog.get(name) for name in datasets}
    return {"records": {name: len(r) for name, r in records.items()}, "get_s": time.perf_counter() - t0,
            "records_mb": tree_pss_mb(os.getpid()) - before}


def step_loader(config_file: str, workers: int, batches: int, dataset: str = "coco_stuff_171_train",
                batch_size: int = 8) -> Dict:
    """Images per second of the training loader (the config's mapper: crop, rescale) with
    ``workers`` workers, over ``batches`` batches after three warm-up batches."""
    import torch

    from detectron2.data import DatasetCatalog

    from ..data.build import build_resumable_train_loader
    from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper

    torch.set_num_threads(1)
    cfg = load_coco_config(config_file, ["DATALOADER.NUM_WORKERS", workers, "SOLVER.IMS_PER_BATCH", batch_size,
                                         "DATASETS.TRAIN", (dataset,)])
    records = DatasetCatalog.get(dataset)
    loader = build_resumable_train_loader(cfg, ZeroShotSemSegDatasetMapper(cfg, is_train=True), seed=0, records=records)
    it = iter(loader)
    for _ in range(3):  # workers started, first batches queued
        batch = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    wall = time.perf_counter() - start
    return {"workers": workers, "images_per_s": batch_size * batches / wall, "image_shape": tuple(batch[0]["image"].shape)}


def step_score(config_file: str, images: int, dataset: str = "coco_stuff_171_val") -> Dict:
    """What ``tools/benchmark_methods.py``'s score run does (the calibration statistics of every
    labelled pixel), with a tiny untrained model on the first ``images`` images of ``dataset``."""
    import resource

    import torch

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
    from ..engine import CaGNetTrainer
    from ..evaluation.calibration import collect_score_statistics

    torch.manual_seed(0)
    cfg = load_coco_config(config_file, TINY_MODEL_OPTS)
    cfg.freeze()
    model = CaGNetTrainer.build_model(cfg)
    records = DatasetCatalog.get(dataset)[:images]
    start = time.perf_counter()
    stats = collect_score_statistics(
        model, records, ZeroShotSemSegDatasetMapper(cfg, is_train=False), dataset_label_lut(MetadataCatalog.get(dataset)),
        model.seen_ids.tolist(), model.unseen_ids.tolist(), extra_edges=(0.0,),
    )
    return {"images": len(records), "seconds": time.perf_counter() - start, "labelled_pixels": stats.num_pixels,
            "histogram_bytes": stats.nbytes, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
