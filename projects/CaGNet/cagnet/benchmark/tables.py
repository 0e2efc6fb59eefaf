# Copyright (c) CaGNet-D2 contributors.
"""A benchmark's results: per (method, seed) metrics from the scored runs, and the tables.

Each finished run directory holds ``gamma.json`` (the model's calibration constant, the test set
and its class names) and ``val_scores.npz`` (the margin statistics of
:mod:`cagnet.evaluation.calibration`): Table 1's metrics at the method's gamma, the calibration
curve and its area (AUSUC) all come from them.
"""
import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .methods import METRICS, Method

__all__ = ["DONE", "RESULTS", "SCORES", "results_file", "collect_rows", "mean_std", "format_mean_std",
           "write_table1", "write_ablation_tables"]

RESULTS = "zs_sem_seg_results.json"  # the evaluator's file, under inference/<dataset>/
DONE = "benchmark_done.json"  # a run and its scoring finished
SCORES = "val_scores.npz"


def results_file(run_dir: str) -> Optional[str]:
    """The evaluator's results of a run (None before its evaluation)."""
    inference = os.path.join(run_dir, "inference")
    if not os.path.isdir(inference):
        return None
    for name in sorted(os.listdir(inference)):
        path = os.path.join(inference, name, RESULTS)
        if os.path.isfile(path):
            return path
    return None


def collect_rows(output: str, methods: Dict[str, Method], seeds: Sequence[int], tolerance: float = 0.05):
    """Per method (name -> the run it is read from, its gamma) and finished seed: the metrics at
    the method's gamma, AUSUC, and the curve. Returns (rows, curves, warnings); a warning names a
    run whose statistics do not reproduce its own evaluation (within ``tolerance`` mIoU points)."""
    from ..evaluation.calibration import area_under_curve, calibration_curve, load_score_statistics

    rows, curves, warnings = [], {}, []
    for m, method in methods.items():
        for seed in seeds:
            out = os.path.join(output, "runs", method.run, f"seed{seed}")
            if not os.path.isfile(os.path.join(out, DONE)):
                continue
            with open(os.path.join(out, "gamma.json")) as f:
                info = json.load(f)
            gamma = 0.0 if method.gamma == "zero" else info["gamma"]
            stats = load_score_statistics(os.path.join(out, SCORES), extra_edges=(gamma,))
            res = stats.metrics(gamma, info["class_names"])
            _, acc_seen, acc_unseen = calibration_curve(stats)
            res["AUSUC"] = 100.0 * area_under_curve(acc_unseen, acc_seen)
            curves.setdefault(m, []).append((acc_unseen, acc_seen, res["mACC-unseen"] / 100, res["mACC-seen"] / 100))
            path = results_file(out)
            if path and method.gamma == "model":
                with open(path) as f:
                    ref = json.load(f)
                diff = max(abs(res[k] - ref[k]) for k in ("mIoU", "mIoU-seen", "mIoU-unseen") if ref.get(k) is not None)
                if diff > tolerance:
                    warnings.append(f"{m} seed {seed}: statistics differ from the run's evaluation by {diff:.3f} mIoU points")
            rows.append({"method": m, "seed": seed, "gamma": gamma, **{k: res[k] for k, _ in METRICS}})
    return rows, curves, warnings


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else 0.0)


def format_mean_std(mean: float, std: float, n: int) -> str:
    """'mean ± std' in a table; a single seed has no spread to show."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def write_table1(output: str, methods: Dict[str, Method], rows: List[Dict], seeds: Sequence[int], dataset: str,
                 footer: str = "") -> str:
    """runs.csv (a row per run and seed), table1.csv (mean and std) and table1.md in ``output``;
    returns the Markdown. A method without a finished seed gets a row of dashes."""
    with open(os.path.join(output, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "seed", "gamma"] + [k for k, _ in METRICS])
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    header = ["method", "seeds"] + [label for _, label in METRICS]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with open(os.path.join(output, "table1.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seeds"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")])
        for m, method in methods.items():
            mine = [r for r in rows if r["method"] == m]
            if not mine:
                md.append(f"| {method.label} | 0 | " + " | ".join("–" for _ in METRICS) + " |")
                continue
            stats = [mean_std([r[k] for r in mine]) for k, _ in METRICS]
            w.writerow([method.label, len(mine)] + [f"{x:.4f}" for ms in stats for x in ms])
            md.append(f"| {method.label} | {len(mine)} | " + " | ".join(format_mean_std(a, b, len(mine)) for a, b in stats)
                      + " |")
    text = (
        f"# Table 1 on {dataset}\n\n"
        f"Mean ± sample standard deviation over seeds {','.join(map(str, seeds))}; all values in percent. "
        "hIoU = 2 S U / (S + U) of the seen and unseen mIoU; pixel and mean (per-class) accuracy over all, seen and "
        "unseen ground-truth pixels; AUSUC = 100 x area under the seen-vs-unseen mean-accuracy curve as the "
        "calibration constant sweeps over the seen scores. SPNet-c uses the gamma its run selected without unseen "
        "labels (SPNet: the same network at gamma = 0).\n\n" + "\n".join(md) + "\n" + (f"\n{footer}\n" if footer else "")
    )
    with open(os.path.join(output, "table1.md"), "w") as f:
        f.write(text)
    return text


ABLATION_METRICS = [("hIoU", "hIoU"), ("mIoU", "mIoU"), ("mIoU-seen", "mIoU seen"), ("mIoU-unseen", "mIoU unseen"),
                    ("AUSUC", "AUSUC")]


def write_ablation_tables(output: str, tables, rows: List[Dict], seeds: Sequence[int], dataset: str,
                          config_name: str, footer: str = "") -> str:
    """ablations.csv and ablations.md in ``output`` (a table per ablation table, a line per row;
    ``rows`` are collect_rows' rows of the ablation runs); returns the Markdown."""
    from .ablations import row_slug

    keys = ABLATION_METRICS
    out = [f"# CaGNet ablations on {dataset}\n",
           f"Mean ± sample standard deviation over seeds {','.join(map(str, seeds))}, in percent; every row is "
           f"{config_name} with the overrides shown. Paper: Pascal-VOC hIoU where our reference notes have it.\n"]
    with open(os.path.join(output, "ablations.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "row", "run", "overrides", "seeds"] + [f"{k}_{s}" for k, _ in keys for s in ("mean", "std")]
                   + ["paper_voc_hIoU"])
        for key, title, table_rows in tables:
            out += [f"## {title}\n", "| row | overrides | seeds | " + " | ".join(lbl for _, lbl in keys)
                    + " | paper VOC hIoU |", "|" + "---|" * (len(keys) + 4)]
            for row in table_rows:
                run = row_slug(row)
                mine = [r for r in rows if r["method"] == run]
                stats = [mean_std([r[k] for r in mine]) if mine else (float("nan"), float("nan")) for k, _ in keys]
                paper = f"{row.paper_voc_hiou:.2f}" if row.paper_voc_hiou is not None else "–"
                shown = " ".join(row.overrides) or "(none)"
                out.append(f"| {row.label} | `{shown}` | {len(mine)} | "
                           + " | ".join(format_mean_std(a, b, len(mine)) for a, b in stats) + f" | {paper} |")
                w.writerow([key, row.label, run, shown, len(mine)] + [f"{x:.4f}" for ms in stats for x in ms]
                           + [row.paper_voc_hiou if row.paper_voc_hiou is not None else ""])
            out.append("")
    if footer:
        out.append(footer)
    text = "\n".join(out) + "\n"
    with open(os.path.join(output, "ablations.md"), "w") as f:
        f.write(text)
    return text
