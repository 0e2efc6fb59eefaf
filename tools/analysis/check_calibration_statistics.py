#!/usr/bin/env python
"""The bounded calibration statistics (margin histograms) against the exact per-pixel ones, on one
trained model's outputs on its test set.

  python tools/analysis/check_calibration_statistics.py --config-file configs/synthetic_scenes/spnet_tiny_synthetic_scenes.yaml \
      MODEL.WEIGHTS output/synthetic_scenes/spnet_tiny/model_final.pth

Both are computed from the same logits (one inference pass): Table 1's metrics at gamma = 0, at
the model's own gamma and at the gamma that SPNet-c's rule (the candidate with the best hIoU; here
on the test set, as a data-chosen gamma) selects from the histogram's candidates; the hIoU that
rule reaches with each form's candidates; and AUSUC. Prints every figure of both, their largest
difference, and the memory of each form; exits 1 if a figure differs by more than --tolerance
points.
"""
import argparse
import sys

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet.data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
from cagnet.evaluation.calibration import (
    area_under_curve, calibration_curve, candidate_gammas, collect_score_statistics,
)
from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config

KEYS = ["hIoU", "mIoU", "mIoU-seen", "mIoU-unseen", "pACC", "pACC-seen", "pACC-unseen", "mACC", "mACC-seen",
        "mACC-unseen"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--tolerance", type=float, default=0.005, help="largest allowed difference, in points")
    p.add_argument("--num-candidates", type=int, default=201)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    return p.parse_args(argv)


def best_gamma(stats, num_candidates):
    candidates = candidate_gammas(stats, num_candidates)
    hiou = [stats.metrics(float(g))["hIoU"] for g in candidates]
    best = max(range(len(candidates)), key=lambda i: (round(hiou[i], 9), -abs(candidates[i])))
    return float(candidates[best])


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    model = build_model_from_checkpoint(cfg, cfg.MODEL.WEIGHTS)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    gamma_model = float(getattr(model, "calibration", torch.zeros(())).item())
    exact = collect_score_statistics(
        model, DatasetCatalog.get(name), ZeroShotSemSegDatasetMapper(cfg, is_train=False), dataset_label_lut(meta),
        model.seen_ids.tolist(), model.unseen_ids.tolist(), ignore_label=getattr(meta, "ignore_label", 255), exact=True,
    )
    hist = exact.histogram(extra_edges=(0.0, gamma_model))  # what collect_score_statistics counts
    g_sel_exact, g_sel_hist = best_gamma(exact, args.num_candidates), best_gamma(hist, args.num_candidates)
    print(f"model: {cfg.MODEL.WEIGHTS}\ntest set: {name}, {exact.num_pixels} labelled pixels, "
          f"{exact.num_classes} classes")
    print(f"memory: per-pixel {exact.num_pixels * 10 / 2**20:.1f} MiB (10 bytes a pixel), histogram "
          f"{hist.nbytes / 2**20:.1f} MiB ({hist.edges.size + 1} margin bins x {hist.num_classes} classes x 4 counts)")
    worst = 0.0
    for label, gamma in (("0", 0.0), ("of the model", gamma_model), ("selected from the histogram", g_sel_hist)):
        a, b = exact.metrics(gamma), hist.metrics(gamma)
        print(f"\nmetrics at gamma {label} = {gamma:.6g}:")
        print("| metric | per-pixel | histogram | difference |\n|---|---|---|---|")
        for k in KEYS:
            d = abs(a[k] - b[k])
            worst = max(worst, d if np.isfinite(d) else 0.0)
            print(f"| {k} | {a[k]:.4f} | {b[k]:.4f} | {d:.2e} |")
    h_exact, h_hist = exact.metrics(g_sel_exact)["hIoU"], hist.metrics(g_sel_hist)["hIoU"]
    print(f"\nSPNet-c's rule (best hIoU of {args.num_candidates} margin quantiles and 0): per-pixel candidates "
          f"-> gamma {g_sel_exact:.6g}, hIoU {h_exact:.4f}; histogram candidates (edges at the quantiles) -> gamma "
          f"{g_sel_hist:.6g}, hIoU {h_hist:.4f}; difference {abs(h_exact - h_hist):.2e}")
    worst = max(worst, abs(h_exact - h_hist))
    auc = []
    for stats in (exact, hist):
        _, acc_seen, acc_unseen = calibration_curve(stats)
        auc.append(100 * area_under_curve(acc_unseen, acc_seen))
    print(f"\nAUSUC: per-pixel {auc[0]:.4f}, histogram {auc[1]:.4f}, difference {abs(auc[0] - auc[1]):.2e}")
    worst = max(worst, abs(auc[0] - auc[1]))
    print(f"largest difference: {worst:.2e} points (tolerance {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
