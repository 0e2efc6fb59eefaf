#!/usr/bin/env python
"""How close the built-in dataset is to the regime of the paper's benchmarks, over generation seeds.

  python tools/analysis/dataset_realism.py --output output/dataset_realism            # seeds 0,1,2

For each seed k (the dataset generated with seed k, models trained with SEED k) it measures
(cagnet/analysis/dataset_realism.py says how):
  * seen bias: unseen mIoU of SPNet without calibration and of SPNet-c (tools/benchmark_methods.py
    --methods spnet,spnet-c, run into OUTPUT/seed<k>/baselines; resumable);
  * information: a probe on the frozen pretrained trunk trained with ALL labels, unseen included;
  * context: how much of a thing class's pretrained feature variance the scene's lighting, the
    position in the object and the ground explain, and how well one pixel's feature tells them;
  * names: correlation over class pairs of word-vector cosine and mean-feature cosine.
Writes OUTPUT/realism.md and realism.json, and OUTPUT/context_features.png (one class's pixel
features, projected on their first two principal components, coloured by context: the paper's Fig. 1).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet.data import synthetic_scenes as scenes
from cagnet.data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
from cagnet.data.embeddings import load_class_embeddings
from cagnet.evaluation.zero_shot_evaluator import load_label_map
from cagnet.utils.cli import load_config, setup_logging
from cagnet.analysis.dataset_realism import (
    FrozenTrunkProbe,
    context_statistics,
    name_appearance_correlation,
    train_probe,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/analysis/../..
DEFAULT_CONFIG = os.path.join(REPO, "configs", "synthetic_scenes", "cagnet_tiny_synthetic_scenes.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="a built-in CaGNet config (its pretrained trunk and data)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--output", required=True)
    p.add_argument("--probe-iters", type=int, default=600)
    p.add_argument("--skip-baselines", action="store_true", help="no SPNet / SPNet-c runs")
    p.add_argument("--jobs", type=int, default=2, help="passed to benchmark_methods")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (every seed)")
    return p.parse_args(argv)


def context_rows(cfg, model: FrozenTrunkProbe, seed: int, max_images: int = 300):
    """Per class, rows [frozen trunk feature..., lighting, rim, ground] of its val pixels at the
    feature resolution, and per class the mean feature."""
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    records = DatasetCatalog.get(name)[:max_images]
    mapper = ZeroShotSemSegDatasetMapper(cfg, is_train=False)
    lut = dataset_label_lut(meta)
    size = cfg.DATASETS.SYNTHETIC_SCENES.IMAGE_SIZE
    looks = scenes.world_looks()
    rows = {n: [] for n in meta.stuff_classes}
    sums = np.zeros((len(meta.stuff_classes), 0))
    feats_all = {n: [] for n in meta.stuff_classes}
    for i, record in enumerate(records):
        _, label, ctx = scenes.render_scene(scenes._image_rng(seed, "val", i), size, looks, with_context=True)
        gt = lut[load_label_map(record["sem_seg_file_name"], dtype=np.uint8)]
        if not np.array_equal(gt, label):
            raise RuntimeError(f"{record['sem_seg_file_name']} differs from its re-rendered scene: another generation?")
        image = mapper(record)["image"].float()[None]
        feat = model.trunk(image)[0]  # (C, h, w)
        h, w = feat.shape[-2:]

        def down(a):
            t = torch.from_numpy(np.ascontiguousarray(a)).float()[None, None]
            return F.interpolate(t, size=(h, w), mode="nearest-exact")[0, 0].numpy()

        lab = down(label).astype(np.int64)
        inst = down(ctx["instance"]).astype(np.int64)
        dist = down(ctx["boundary_distance"]) / model.stride
        f = feat.permute(1, 2, 0).numpy()
        for c in np.unique(lab):
            if c == scenes.IGNORE_LABEL:
                continue
            m = lab == c
            feats_all[meta.stuff_classes[c]].append(f[m])
            if scenes.CLASS_NAMES[c] in scenes.STUFF:
                continue
            ground = np.array([ctx["instances"][j]["ground"] if j >= 0 else -1 for j in inst[m]])
            rim = (dist[m] <= 1.5).astype(np.float64)
            rows[meta.stuff_classes[c]].append(
                np.concatenate([f[m], np.full((m.sum(), 1), ctx["lighting"]), rim[:, None], ground[:, None]], 1))
    means = np.stack([np.concatenate(v).mean(0) for v in feats_all.values()])
    return {k: v for k, v in rows.items() if v}, means


def run_baselines(args, seed: int, out: str):
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark_methods.py"), "--dataset-config", args.config_file,
           "--methods", "spnet,spnet-c", "--seeds", str(seed), "--output", out, "--jobs", str(args.jobs),
           "DATASETS.SYNTHETIC_SCENES.SEED", str(seed), *args.opts]
    subprocess.run(cmd, check=True, cwd=REPO)
    import csv

    with open(os.path.join(out, "runs.csv")) as f:
        return {r["method"]: {k: float(v) for k, v in r.items() if k not in ("method",)} for r in csv.DictReader(f)}


def plot_context(path, rows_by_class, class_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.concatenate(rows_by_class[class_name])
    f = x[:, :-3] - x[:, :-3].mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    p = f @ vt[:2].T
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    titles = ("scene lighting", "position in the object", "ground it stands on")
    labels = ([n for n, *_ in scenes.LIGHTINGS], ["interior", "rim"], None)
    for j, ax in enumerate(axes):
        g = x[:, -3 + j].astype(int)
        for v in np.unique(g):
            name = labels[j][v] if labels[j] else scenes.CLASS_NAMES[v]
            ax.scatter(*p[g == v].T, s=3, alpha=0.5, label=name)
        ax.set_title(f"{class_name}: {titles[j]}", fontsize=10)
        ax.legend(fontsize=7, markerscale=3)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Frozen pretrained features of one class's pixels (first two principal components)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    logger = setup_logging()
    os.makedirs(args.output, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    start = time.perf_counter()
    results = {}
    for seed in seeds:
        cfg = load_config(args.config_file, ["SEED", str(seed), "DATASETS.SYNTHETIC_SCENES.SEED", str(seed), *args.opts])
        res = {}
        if not args.skip_baselines:
            res["baselines"] = run_baselines(args, seed, os.path.join(args.output, f"seed{seed}", "baselines"))
        logger.info(f"seed {seed}: probe on the frozen pretrained trunk, all labels")
        res["probe"] = {k: v for k, v in train_probe(cfg, cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0],
                                                     iters=args.probe_iters, seed=seed).items()
                        if not k.startswith(("IoU-", "ACC-"))}
        model = FrozenTrunkProbe(cfg, 1)
        rows, means = context_rows(cfg, model, seed)
        res["context"] = context_statistics(rows, seed=seed)
        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        vectors = load_class_embeddings(meta.class_embeddings_file, expected_names=meta.stuff_classes)["vectors"]
        res["names"] = name_appearance_correlation(vectors, means)
        if seed == seeds[0]:
            plot_context(os.path.join(args.output, "context_features.png"), rows, max(rows, key=lambda k: len(rows[k])))
        results[seed] = res
        logger.info(f"seed {seed}: {json.dumps(res)}")
    with open(os.path.join(args.output, "realism.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = format_table(results, time.perf_counter() - start)
    with open(os.path.join(args.output, "realism.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def format_table(results, wall_s):
    head = ["seed", "SPNet unseen mIoU", "SPNet-c unseen mIoU", "SPNet seen mIoU", "probe unseen mIoU", "probe seen mIoU",
            "lighting: var. expl. / acc. (chance)", "position: var. expl. / acc. (chance)",
            "ground: var. expl. / acc. (chance)", "names vs features (Pearson / Spearman)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ctx(c):
        return f"{100 * c['variance_explained']:.0f}% / {100 * c['nearest_mean_accuracy']:.0f}% ({100 * c['chance']:.0f}%)"

    for seed, r in results.items():
        b = r.get("baselines", {})
        sp, spc = b.get("spnet", {}), b.get("spnet-c", {})
        cells = [str(seed), f"{sp.get('mIoU-unseen', float('nan')):.1f}", f"{spc.get('mIoU-unseen', float('nan')):.1f}",
                 f"{sp.get('mIoU-seen', float('nan')):.1f}", f"{r['probe']['mIoU-unseen']:.1f}", f"{r['probe']['mIoU-seen']:.1f}",
                 ctx(r["context"]["lighting"]), ctx(r["context"]["position in the object"]), ctx(r["context"]["ground"]),
                 f"{r['names']['pearson']:.2f} / {r['names']['spearman']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nWall time: {wall_s / 60:.1f} min\n"


if __name__ == "__main__":
    sys.exit(main())
