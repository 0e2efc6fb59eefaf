#!/usr/bin/env python
"""The paper's Table 1 on one dataset: SPNet, SPNet-c, ZS3Net, ZS3Net+ST, CaGNet, CaGNet+ST, over seeds.

  python tools/benchmark_methods.py --output output/benchmark_methods       # built-in dataset, 6 methods, seeds 0,1,2
  python tools/benchmark_methods.py --dataset-config configs/pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc20.yaml \\
      --methods spnet,spnet-c,cagnet --seeds 0 --output output/table1_voc20 MODEL.WEIGHTS R-101.pkl

--dataset-config is the dataset's CaGNet config; every other method's config lies beside it with
the method's run name as prefix instead of ``cagnet_`` (spnet_, spnet-c_, zs3net_, zs3net-st_,
cagnet-st_, cagnet-reference_, cagnet-two-phase_; cagnet.benchmark.methods).
Every (method, seed) is one ``tools/train_net.py`` run in DIR/runs/<run>/seed<k> (SEED k), so
each method trains and evaluates exactly as its config says; the +ST runs continue their base
run's model_final.pth (same seed). SPNet and SPNet-c are one network: when both are asked for,
the SPNet-c run (which also trains its calibration network) is reported with gamma = 0 (SPNet) and
with its selected gamma (SPNet-c). Likewise a calibrated run (CaGNet-c, ZS3Net-c) asked for beside
its uncalibrated one trains only its calibration network: its main network is the uncalibrated
run's model_final.pth (same seed; the resolved configs must differ only in MODEL.CALIBRATION, else
it trains its own), the same training that it would repeat.

After a run, its model scores the test set once more (a second process) and the benchmark keeps
the statistics that decide the prediction for any calibration constant gamma, as margin
histograms of bounded size (cagnet.evaluation.calibration.ScoreHistogram, ~19 MB at 171 classes
whatever the test set's size; exact at gamma 0 and at the run's gamma): Table 1's metrics (at the method's own gamma), the calibration
curve (mean seen vs mean unseen accuracy as gamma sweeps over the seen scores) and its area
(AUSUC) all come from them. Outputs in DIR: table1.md, table1.csv (mean and std over seeds),
runs.csv (one row per run and seed), calibration_curves.png, progress.log.

With --tables-only nothing is trained and the tables come from the finished runs (each row says
over how many seeds). Resumable: a finished run (benchmark_done.json) is skipped, an interrupted one continues from its
last checkpoint (train_net --resume). The resolved config of each run (file + overrides) is frozen
in DIR/configs at the first invocation and used for every seed; if a config file or the overrides
change later, the benchmark stops instead of mixing configs. A run preempted by a signal (train_net's
exit status 75, docs/CLUSTER.md) is not a failure: no further run starts, and the benchmark exits with
75 too, so that the same command (e.g. a requeued job) resumes it. A preemption signal sent to the
benchmark itself is passed on to its running train_net processes. Runs go --jobs at a time, each with
--threads torch threads. With the overrides TEST.AUG.ENABLED True (and TEST.AUG.MIN_SIZES / FLIP),
every run is scored with test-time augmentation: Table 1, the curves and AUSUC then come from the
averaged logits (the calibration constant acts on them as on a single pass).

The planning, scheduling and tables live in cagnet.benchmark (tested there); this script runs the
processes.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List

from cagnet.benchmark.methods import DEFAULT_METHODS, METHODS, Method, run_of
from cagnet.benchmark.plan import (
    adopt_renamed_runs, freeze_configs, load_benchmark_config, plan_ablation_runs, plan_runs,
    share_networks,
)
from cagnet.benchmark.scheduler import Progress, RunPreempted, run_all
from cagnet.benchmark.tables import (
    DONE, SCORES, collect_rows, mean_std, results_file, write_ablation_tables, write_table1,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATASET_CONFIG = os.path.join("configs", "synthetic_scenes", "cagnet_tiny_synthetic_scenes.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-config", default=DEFAULT_DATASET_CONFIG, help="the dataset's CaGNet config")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of {list(METHODS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--output", required=True, help="directory for runs, tables and the figure")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--status-every", type=float, default=120, help="seconds between progress lines of running runs")
    p.add_argument("--score-run", metavar="RUN_DIR", help=argparse.SUPPRESS)  # internal, see run_job
    p.add_argument("--method-opts", action="append", default=[], metavar="METHOD: KEY VALUE ...",
                   help="config overrides for one method's runs, e.g. 'cagnet: SOLVER.MAX_ITER 800' (repeatable)")
    p.add_argument("--ablations", metavar="TABLES", default=None,
                   help="instead of Table 1, the paper's ablations of CaGNet (cagnet/benchmark/ablations.py): 'all' "
                        "or a comma-separated subset of table2,table3,table4,table5,supplementary; each row is a "
                        "config override of --dataset-config. With the --output of a Table 1 run, its CaGNet runs "
                        "are reused")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: write the tables from the runs that have finished (a row counts its seeds)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- scoring one run
def score_run(run_dir: str) -> None:
    """Uncalibrated test-set statistics of a finished run and its gamma, with the config the run
    was trained with (its config.yaml). Run in a fresh process (``--score-run``), like training:
    the code that scores is the code that trained, even if the project changed meanwhile."""
    import torch

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from cagnet.data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
    from cagnet.evaluation.calibration import collect_score_statistics
    from cagnet.modeling import SemanticSegmentorWithTTA, build_model_from_checkpoint

    cfg = load_benchmark_config(os.path.join(run_dir, "config.yaml"))
    cfg.freeze()
    model = build_model_from_checkpoint(cfg, os.path.join(run_dir, "model_final.pth"))
    if cfg.TEST.AUG.ENABLED:  # scores (and calibration statistics) of the averaged logits
        model = SemanticSegmentorWithTTA(cfg, model)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    gamma = float(getattr(model, "calibration", torch.zeros(())).item())
    # Bounded in memory (margin histograms, cagnet.evaluation.calibration); exact at gamma 0 and
    # at the model's own gamma, which are bin edges.
    stats = collect_score_statistics(
        model, DatasetCatalog.get(name), ZeroShotSemSegDatasetMapper(cfg, is_train=False), dataset_label_lut(meta),
        model.seen_ids.tolist(), model.unseen_ids.tolist(), ignore_label=getattr(meta, "ignore_label", 255),
        extra_edges=(0.0, gamma),
    )
    stats.save(os.path.join(run_dir, SCORES + ".tmp.npz"))
    os.replace(os.path.join(run_dir, SCORES + ".tmp.npz"), os.path.join(run_dir, SCORES))
    with open(os.path.join(run_dir, "gamma.json"), "w") as f:
        json.dump({"gamma": gamma, "dataset": name, "class_names": list(meta.stuff_classes)}, f)


# ---------------------------------------------------------------------- the runs
def _adopt_network(src_dir: str, out: str) -> None:
    """Copy (never link: the run overwrites it) a finished run's model_final.pth into ``out`` and
    tag it, so that train_net --resume there finds a finished network and only calibrates it."""
    src = os.path.join(src_dir, "model_final.pth")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} does not exist: the uncalibrated run did not finish")
    dst = os.path.join(out, "model_final.pth")
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    with open(os.path.join(out, "last_checkpoint.tmp"), "w") as f:
        f.write("model_final.pth")
    os.replace(os.path.join(out, "last_checkpoint.tmp"), os.path.join(out, "last_checkpoint"))


_CHILDREN: set = set()  # the running train_net / scoring processes (to pass a signal on)
_CHILDREN_LOCK = threading.Lock()


def _run(cmd: List[str], log_path: str, env: Dict[str, str]) -> None:
    from cagnet.engine.preemption import PREEMPTED_EXIT_STATUS

    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        with _CHILDREN_LOCK:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            _CHILDREN.add(proc)
        try:
            proc.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
    if proc.returncode == PREEMPTED_EXIT_STATUS:
        raise RunPreempted(f"preempted, its checkpoint saved; see {log_path}")
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}; see {log_path}")


def _pass_signals_on(stop: threading.Event, signals=("SIGTERM", "SIGUSR1")) -> None:
    """A preemption signal to the benchmark: start no further run, and send it to the running
    ones (each then saves its checkpoint and exits with the preempted status)."""
    import signal

    def forward(signum, frame):
        stop.set()
        with _CHILDREN_LOCK:
            for proc in _CHILDREN:
                if proc.poll() is None:
                    proc.send_signal(signum)

    for name in signals:
        signal.signal(getattr(signal, name), forward)


def run_job(args, name: str, spec: Dict, seed: int, progress: Progress) -> Dict:
    """One (run, seed): train and evaluate (train_net.py --resume), then score; skipped when done."""
    out = os.path.join(args.output, "runs", name, f"seed{seed}")
    done_path = os.path.join(out, DONE)
    opts = ["SEED", str(seed), "OUTPUT_DIR", out]  # the rest is in the frozen config
    if spec["base"]:
        opts += ["MODEL.WEIGHTS", os.path.join(args.output, "runs", spec["base"], f"seed{seed}", "model_final.pth")]
    os.makedirs(out, exist_ok=True)
    if os.path.isfile(done_path):
        progress(f"{name} seed {seed}: finished before, skipped", finished=True)
        with open(done_path) as f:
            return json.load(f)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log = os.path.join(out, "benchmark.log")
    start = time.perf_counter()
    if not (os.path.isfile(os.path.join(out, "model_final.pth")) and results_file(out)):
        what = "training"
        if spec.get("network_of"):
            if not os.path.isfile(os.path.join(out, "model_final.pth")):
                _adopt_network(os.path.join(args.output, "runs", spec["network_of"], f"seed{seed}"), out)
            what = f"calibrating {spec['network_of']}'s network"
        progress(f"{name} seed {seed}: {what} ({os.path.relpath(spec['source_config'], REPO)})")
        _run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", spec["config"], "--resume", *opts],
             log, env)
    train_s = time.perf_counter() - start
    _run([sys.executable, os.path.abspath(__file__), "--output", args.output, "--score-run", out], log, env)
    info = {"run": name, "seed": seed, "train_and_eval_s": train_s, "total_s": time.perf_counter() - start}
    with open(done_path, "w") as f:
        json.dump(info, f)
    progress(f"{name} seed {seed}: finished in {info['total_s'] / 60:.1f} min", finished=True)
    return info


def _run_status(args, run: str, seed: int) -> str:
    """Where a run is, from the newest metrics.json in its directory (the calibration network's too)."""
    out = os.path.join(args.output, "runs", run, f"seed{seed}")
    paths = [p for p in (os.path.join(out, "metrics.json"), os.path.join(out, "calibration", "metrics.json"))
             if os.path.isfile(p)]
    if not paths:
        return "starting"
    path = max(paths, key=os.path.getmtime)
    try:
        with open(path) as f:
            last = json.loads(f.readlines()[-1])
        where = "calibration network, " if "calibration" in os.path.relpath(path, out) else ""
        return f"{where}iteration {last['iteration'] + 1}"
    except (ValueError, IndexError, KeyError):
        return "running"


def _run_jobs(args, runs: Dict[str, Dict], seeds: List[int], progress: Progress):
    """run_all (nothing with --tables-only) under preemption signals: (failures, None), or after a
    preemption (failures, the preempted exit status) with the line that says how to resume."""
    if args.tables_only:
        return {}, None
    preempted, stop = {}, threading.Event()
    _pass_signals_on(stop)
    failed = run_all(runs, seeds, lambda name, spec, seed: run_job(args, name, spec, seed, progress), progress,
                     jobs=args.jobs, status_every=args.status_every, describe=lambda r, s: _run_status(args, r, s),
                     preempted=preempted, stop=stop)
    if not (preempted or stop.is_set()):
        return failed, None
    from cagnet.engine.preemption import PREEMPTED_EXIT_STATUS, resume_command

    print(f"Preempted ({len(preempted)} run(s) saved a checkpoint). Run the same command again to resume: "
          f"{resume_command()}", flush=True)
    return failed, PREEMPTED_EXIT_STATUS


# ---------------------------------------------------------------------- tables and figure
def plot_curves(args, methods: Dict[str, Method], curves: Dict, rows: List[Dict], dataset: str) -> str:
    """One curve per method and seed; a method that shares its network with another (SPNet with
    SPNet-c) is drawn dashed on top, with its own operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(methods):
        if m not in curves:
            continue
        c = colours[i % len(colours)]
        auc = mean_std([r["AUSUC"] for r in rows if r["method"] == m])
        shared = methods[m].run != METHODS[m].run if m in METHODS else False
        for j, (x, y, ox, oy) in enumerate(curves[m]):
            ax.plot(100 * x, 100 * y, color=c, lw=1.6 if shared else 1.2, alpha=0.8, ls="--" if shared else "-",
                    zorder=3 if shared else 2,
                    label=f"{methods[m].label} (AUSUC {auc[0]:.1f} ± {auc[1]:.1f})" if j == 0 else None)
            ax.plot(100 * ox, 100 * oy, "o", color=c, ms=5, mec="k", mew=0.5, zorder=4)
    ax.set_xlabel("unseen classes: mean accuracy (%)")
    ax.set_ylabel("seen classes: mean accuracy (%)")
    ax.set_title(f"Calibration curves on {dataset}\n(gamma subtracted from seen scores; dots: reported operating points)",
                 fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    path = os.path.join(args.output, "calibration_curves.png")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _test_dataset(args, runs: Dict[str, Dict], seeds: List[int]):
    for name in runs:
        for seed in seeds:
            path = os.path.join(args.output, "runs", name, f"seed{seed}", "gamma.json")
            if os.path.isfile(path):
                with open(path) as f:
                    return json.load(f)["dataset"]
    return None


def _report(text: str, warnings: List[str], failed: Dict) -> int:
    print("\n" + text)
    for w in warnings:
        print("WARNING:", w)
    if failed:
        print("FAILED runs:\n" + "\n".join(f"  {r} seed {s}: {e}" for (r, s), e in failed.items()))
        return 1
    return 0


# ---------------------------------------------------------------------- main
def run_ablations(args, start: float) -> int:
    """The paper's ablation tables: every distinct row is one run (all seeds) of the dataset's
    CaGNet config with the row's overrides; scored like Table 1's runs."""
    from detectron2.data import MetadataCatalog

    cfg = load_benchmark_config(args.dataset_config, list(args.opts))
    meta = MetadataCatalog.get((cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)[0])
    tables, runs = plan_ablation_runs(args.dataset_config, args.ablations, len(meta.seen_class_ids),
                                      len(meta.unseen_class_ids), args.method_opts)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    freeze_configs(args.output, runs, args.opts)
    progress = Progress(os.path.join(args.output, "progress.log"), len(runs) * len(seeds))
    progress(f"ablations {[t[0] for t in tables]}: {len(runs)} runs x {len(seeds)} seeds ({args.jobs} at a time)")
    failed, status = _run_jobs(args, runs, seeds, progress)
    if status is not None:
        return status
    rows, _, warnings = collect_rows(args.output, {name: Method(name, name) for name in runs}, seeds)
    footer = (f"Wall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min (--jobs {args.jobs}, "
              f"--threads {args.threads}).")
    text = write_ablation_tables(args.output, tables, rows, seeds, meta.name,
                                 os.path.relpath(os.path.abspath(args.dataset_config), REPO), footer)
    return _report(text, warnings, failed)


def main(argv=None):
    args = parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    import torch

    from cagnet.engine.cpu_allocator import tune_cpu_allocator

    torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    if args.score_run:
        return score_run(args.score_run)
    start = time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    try:
        for line in adopt_renamed_runs(args.output):
            print(f"Renamed run: {line}")
        if args.ablations is not None:
            return run_ablations(args, start)
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        runs = plan_runs(args.dataset_config, names, args.method_opts)
        freeze_configs(args.output, runs, args.opts)
        for note in share_networks(runs):
            print(note)
    except ValueError as e:  # BenchmarkConfigError and the configs' own value errors: one line
        raise SystemExit(str(e))
    progress = Progress(os.path.join(args.output, "progress.log"), len(runs) * len(seeds))
    progress(f"{len(runs)} runs x {len(seeds)} seeds for {names} ({args.jobs} at a time, {args.threads} thread(s) each)")
    failed, status = _run_jobs(args, runs, seeds, progress)
    if status is not None:
        return status
    # Each method, read from the run it shares (SPNet from SPNet-c's) at its own gamma.
    methods = {m: Method(run_of(m, names), METHODS[m].label, gamma=METHODS[m].gamma) for m in names}
    rows, curves, warnings = collect_rows(args.output, methods, seeds)
    dataset = _test_dataset(args, runs, seeds) or os.path.basename(args.dataset_config)
    footer = (f"Wall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min (--jobs {args.jobs}, "
              f"--threads {args.threads}).")
    text = write_table1(args.output, methods, rows, seeds, dataset, footer)
    png = plot_curves(args, methods, curves, rows, dataset)
    code = _report(text, warnings, failed)
    print(f"Calibration curves: {png}")
    return code


if __name__ == "__main__":
    sys.exit(main())
