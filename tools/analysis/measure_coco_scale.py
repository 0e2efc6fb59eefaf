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
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/analysis/../..
CONFIG = os.path.join(REPO, "configs", "coco_stuff", "cagnet_R101_os8_bs8_crop368_46k_cocostuff171.yaml")
STEPS = ("register", "loader", "evaluate", "score")


def parse_args(argv=None):
    from cagnet.analysis.coco_scale import NUM_VAL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(REPO, "output", "coco_scale"), help="datasets root of the stand-in")
    p.add_argument("--distinct", type=int, default=8, help="distinct image/label pairs behind the links")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {STEPS}")
    p.add_argument("--loader-batches", type=int, default=25, help="timed batches (of 8) per worker count")
    p.add_argument("--score-images", type=int, default=NUM_VAL)
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    return p.parse_args(argv)


def _run_step(args):
    """One step in this process (a child of main); prints its figures as one JSON line."""
    start = time.perf_counter()
    import cagnet  # noqa: F401  (registers coco_stuff_171_* at $DETECTRON2_DATASETS)
    from cagnet.analysis import coco_scale

    if args.step == "register":
        out = dict(coco_scale.step_register(), import_s=time.perf_counter() - start)
    elif args.step == "loader":
        out = coco_scale.step_loader(CONFIG, int(os.environ["MEASURE_WORKERS"]), args.loader_batches)
    else:
        out = coco_scale.step_score(CONFIG, args.score_images)
    print(json.dumps(out))


def _child(args, step, env):
    from cagnet.analysis.coco_scale import run_measured

    cmd = [sys.executable, os.path.abspath(__file__), "--root", args.root, "--step", step,
           "--loader-batches", str(args.loader_batches), "--score-images", str(args.score_images)]
    wall, peak, out = run_measured(cmd, env, cwd=REPO)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return wall, peak, json.loads(lines[-1])


def main(argv=None):
    args = parse_args(argv)
    args.root = os.path.abspath(args.root)
    env = dict(os.environ, DETECTRON2_DATASETS=args.root, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if args.step:
        return _run_step(args)
    from cagnet.analysis.coco_scale import NUM_VAL, TINY_MODEL_OPTS, build_stand_in, run_measured

    os.environ["DETECTRON2_DATASETS"] = args.root
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    build_stand_in(args.root, args.distinct)

    if "register" in steps:
        wall, peak, r = _child(args, "register", env)
        n = list(r["records"].values())
        print(f"registration: {n[0]} + {n[1]} records in {r['get_s']:.1f} s "
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
        wall, peak, out = run_measured(cmd, env, cwd=REPO)
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
