#!/usr/bin/env python
"""COCO-stuff 164k at full size, measured on a stand-in tree: registration, the training loader,
evaluation through launch(), and the Table-1 benchmark's scoring pass.

  python tools/analysis/measure_coco_scale.py --root output/coco_scale

The stand-in (built under ROOT on the first run, reused afterwards) is the prepared layout that
``cagnet/data/datasets/register_coco_stuff.py`` reads -- coco/{train2017,val2017}/*.jpg,
coco/stuffthingmaps_cagnet171/{train2017,val2017}/*.png, the split lists and the completion
marker -- with 118,287 + 5,000 names that are hard links to --distinct real-size pairs: 640x480
JPEGs of natural-looking random scenes (regions of flat colour with 1/f texture, at COCO's
typical ~160 KB a file) and label PNGs of the 171 classes (a few percent ignore). Hard links
cost no disk space; but the few distinct files stay in the page cache, so the loader figures
exclude disk reads.

Each step runs in its own process; its peak memory is the largest sum of PSS over its process
tree (workers included), sampled every 0.2 s from /proc (Linux):
  1. registration: DatasetCatalog.get of both splits (118k + 5k records, every file checked);
  2. loader: the COCO config's training mapper (random scale 0.5-1.5, crop 368, flip) through the
     resumable training loader, batch 8, DATALOADER.NUM_WORKERS 1 and 2: images/s;
  3. evaluation: tools/train_net.py --eval-only --num-gpus 2 (two CPU workers via launch()) on
     the 5k val images with a TINY model (tests/_dataset_helpers.py's TINY_MODEL_OPTS: a
     ResNet of one block per stage and 32 feature channels, 171 classes), so that the figure is
     the harness's cost (loading, full-resolution logits, the evaluator), not a network's;
  4. score: the Table-1 benchmark's scoring pass (tools/benchmark_methods.py --score-run: the
     calibration statistics of every labelled val pixel) with the same tiny model, one process.
--steps picks steps; --score-images scores the first N val images only (default all).
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/analysis/../..
CONFIG = os.path.join(REPO, "configs", "coco_stuff", "cagnet_R101_os8_bs8_crop368_46k_cocostuff171.yaml")
NUM_TRAIN, NUM_VAL = 118_287, 5_000
TINY_MODEL_OPTS = [  # as tests/_dataset_helpers.py
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "50", "MODEL.DILATED_RESNET.NUM_BLOCKS", "[1,1,1,1]",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.ASPP_L.OUT_CHANNELS", "32",
    "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", "[32]", "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", "32",
    "MODEL.CAGNET.CHANNELS_LAST", "False",
]
STEPS = ("register", "loader", "evaluate", "score")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(REPO, "output", "coco_scale"), help="datasets root of the stand-in")
    p.add_argument("--distinct", type=int, default=8, help="distinct image/label pairs behind the links")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {STEPS}")
    p.add_argument("--loader-batches", type=int, default=25, help="timed batches (of 8) per worker count")
    p.add_argument("--score-images", type=int, default=NUM_VAL)
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    return p.parse_args(argv)


# ---------------------------------------------------------------------- the stand-in tree
def _natural_image(rng, label):
    """A 480x640 RGB scene: per label region a colour, with 1/f-noise texture and shading."""
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


def _label_map(rng, h=480, w=640, regions=12):
    """Voronoi regions of random classes 0..170, a few percent 255 (unlabeled) along one edge."""
    ys, xs = rng.integers(0, h, regions), rng.integers(0, w, regions)
    yy, xx = np.mgrid[0:h, 0:w]
    nearest = np.argmin((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2, axis=-1)
    label = rng.integers(0, 171, regions).astype(np.uint8)[nearest]
    label[:, : int(0.03 * w)] = 255
    return label


def _jpeg_near(path, image, target_bytes=160_000):
    """Save at the JPEG quality whose file size is closest to ``target_bytes``."""
    from PIL import Image

    best = None
    for quality in range(70, 99, 2):
        Image.fromarray(image).save(path, format="JPEG", quality=quality)
        size = os.path.getsize(path)
        if best is None or abs(size - target_bytes) < abs(best[1] - target_bytes):
            best = (quality, size)
    Image.fromarray(image).save(path, format="JPEG", quality=best[0])
    return best


def build_stand_in(root, distinct):
    from PIL import Image

    from cagnet.data.datasets.register_coco_stuff import coco_stuff_paths
    from cagnet.data.register import PREPARED_MARKER, write_prepared_marker

    paths = coco_stuff_paths(root)
    info = {"stand_in": True, "distinct": distinct, "splits": {"train": NUM_TRAIN, "val": NUM_VAL}}
    marker = os.path.join(paths["prepared"], PREPARED_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == info:
                print(f"stand-in tree: {root} (exists)")
                return
    start = time.perf_counter()
    sources = os.path.join(root, "stand_in_sources")
    os.makedirs(sources, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs, sizes = [], []
    for i in range(distinct):
        label = _label_map(rng)
        jpg, png = os.path.join(sources, f"{i}.jpg"), os.path.join(sources, f"{i}.png")
        quality, size = _jpeg_near(jpg, _natural_image(rng, label))
        Image.fromarray(label).save(png)
        pairs.append((jpg, png))
        sizes.append((size, os.path.getsize(png), quality))
    for split, n, offset in (("train", NUM_TRAIN, 0), ("val", NUM_VAL, 10**9)):
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
    print(f"stand-in tree: {root}, {NUM_TRAIN} + {NUM_VAL} names -> {distinct} pairs, built in "
          f"{time.perf_counter() - start:.0f} s; JPEG {np.mean([s[0] for s in sizes]) / 1e3:.0f} KB "
          f"(quality {sizes[0][2]}-{max(s[2] for s in sizes)}), label PNG {np.mean([s[1] for s in sizes]) / 1e3:.1f} KB "
          f"on average, 640x480")


# ---------------------------------------------------------------------- memory of a process tree
def _children(pid):
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


def _pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mb(pid):
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += _pss_kb(p)
        todo.extend(_children(p))
    return total / 1024


def run_measured(cmd, env):
    """(wall seconds, peak tree PSS in MB, stdout) of a command."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))
            time.sleep(0.2)

    start = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - start
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-5000:]}")
    return wall, peak[0], out


# ---------------------------------------------------------------------- the steps (in a child process)
def _cfg(opts=()):
    from detectron2.config import get_cfg

    from cagnet import add_cagnet_config

    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg


def step_register(args):
    start = time.perf_counter()
    from detectron2.data import DatasetCatalog

    import cagnet  # noqa: F401  (registers coco_stuff_171_* at $DETECTRON2_DATASETS)

    before = tree_pss_mb(os.getpid())
    t0 = time.perf_counter()
    records = {s: DatasetCatalog.get(f"coco_stuff_171_{s}") for s in ("train", "val")}
    n = {s: len(r) for s, r in records.items()}
    print(json.dumps({"records": n, "get_s": time.perf_counter() - t0, "import_s": t0 - start,
                      "records_mb": tree_pss_mb(os.getpid()) - before}))


def step_loader(args):
    import torch

    from detectron2.data import DatasetCatalog

    from cagnet.data.build import build_resumable_train_loader
    from cagnet.data.dataset_mapper import ZeroShotSemSegDatasetMapper

    torch.set_num_threads(1)
    workers = int(os.environ["MEASURE_WORKERS"])
    cfg = _cfg(["DATALOADER.NUM_WORKERS", workers, "SOLVER.IMS_PER_BATCH", 8])
    records = DatasetCatalog.get("coco_stuff_171_train")
    loader = build_resumable_train_loader(cfg, ZeroShotSemSegDatasetMapper(cfg, is_train=True), seed=0, records=records)
    it = iter(loader)
    for _ in range(3):  # workers started, first batches queued
        batch = next(it)
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        batch = next(it)
    wall = time.perf_counter() - start
    shape = tuple(batch[0]["image"].shape)
    print(json.dumps({"workers": workers, "images_per_s": 8 * args.loader_batches / wall, "image_shape": shape}))


def step_score(args):
    import resource

    import torch

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from cagnet.data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
    from cagnet.engine import CaGNetTrainer
    from cagnet.evaluation.calibration import collect_score_statistics

    torch.manual_seed(0)
    cfg = _cfg(TINY_MODEL_OPTS)
    cfg.freeze()
    model = CaGNetTrainer.build_model(cfg)
    records = DatasetCatalog.get("coco_stuff_171_val")[: args.score_images]
    meta = MetadataCatalog.get("coco_stuff_171_val")
    start = time.perf_counter()
    # What tools/benchmark_methods.py's score_run does, with this model.
    stats = collect_score_statistics(
        model, records, ZeroShotSemSegDatasetMapper(cfg, is_train=False), dataset_label_lut(meta),
        model.seen_ids.tolist(), model.unseen_ids.tolist(), extra_edges=(0.0,),
    )
    wall = time.perf_counter() - start
    print(json.dumps({"images": len(records), "seconds": wall, "labelled_pixels": stats.num_pixels,
                      "histogram_bytes": stats.nbytes, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _child(args, step, env, extra=()):
    cmd = [sys.executable, os.path.abspath(__file__), "--root", args.root, "--step", step,
           "--loader-batches", str(args.loader_batches), "--score-images", str(args.score_images), *extra]
    wall, peak, out = run_measured(cmd, env)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return wall, peak, json.loads(lines[-1])


def main(argv=None):
    args = parse_args(argv)
    args.root = os.path.abspath(args.root)
    env = dict(os.environ, DETECTRON2_DATASETS=args.root, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if args.step:
        return {"register": step_register, "loader": step_loader, "score": step_score}[args.step](args)
    os.environ["DETECTRON2_DATASETS"] = args.root
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    build_stand_in(args.root, args.distinct)

    if "register" in steps:
        wall, peak, r = _child(args, "register", env)
        print(f"registration: {r['records']['train']} + {r['records']['val']} records in {r['get_s']:.1f} s "
              f"(DatasetCatalog.get of both splits, every file checked; imports {r['import_s']:.1f} s); "
              f"the records take {r['records_mb']:.0f} MB; peak memory of the process {peak:.0f} MB")
    if "loader" in steps:
        for workers in (1, 2):
            wall, peak, r = _child(args, "loader", dict(env, MEASURE_WORKERS=str(workers)))
            print(f"training loader, {workers} worker(s), crop 368, batch 8: {r['images_per_s']:.1f} images/s "
                  f"({r['images_per_s'] / workers:.1f} per worker); peak memory {peak:.0f} MB (main process + workers)")
    if "evaluate" in steps:
        opts = TINY_MODEL_OPTS + ["DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", os.path.join(args.root, "eval_output")]
        cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG, "--eval-only",
               "--num-gpus", "2", *opts]
        wall, peak, out = run_measured(cmd, env)
        timing = [line.split("]:", 1)[-1].strip() for line in out.splitlines() if "Total inference" in line]
        print(f"evaluation: {NUM_VAL} val images, 2 CPU workers through launch(), tiny model: {wall:.0f} s wall "
              f"({NUM_VAL / wall:.2f} images/s), peak memory {peak:.0f} MB (both workers and their loaders)")
        for line in timing:
            print(f"  detectron2: {line}")
    if "score" in steps:
        wall, peak, r = _child(args, "score", env)
        per_pixel_gb = 10 * r["labelled_pixels"] / 1e9
        print(f"Table-1 scoring pass (benchmark_methods --score-run), tiny model, one process: {r['images']} val "
              f"images in {r['seconds']:.0f} s; {r['labelled_pixels']:.3e} labelled pixels; calibration statistics "
              f"{r['histogram_bytes'] / 2**20:.1f} MB (margin histograms; the per-pixel form would keep "
              f"{per_pixel_gb:.1f} GB); peak memory {peak:.0f} MB (maxrss {r['maxrss_mb']:.0f} MB)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    sys.exit(main())
