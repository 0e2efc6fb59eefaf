#!/usr/bin/env python
"""The paper's Table 1 on one dataset: SPNet, SPNet-c, ZS3Net, ZS3Net+ST, CaGNet, CaGNet+ST, over seeds.

  python tools/benchmark_methods.py --output output/benchmark_methods       # built-in dataset, 6 methods, seeds 0,1,2
  python tools/benchmark_methods.py --dataset-config configs/pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc20.yaml \\
      --methods spnet,spnet-c,cagnet --seeds 0 --output output/table1_voc20 MODEL.WEIGHTS R-101.pkl

--dataset-config is the dataset's CaGNet config; every other method's config lies beside it with
the method's prefix instead of ``cagnet_`` (spnet_, spnet-c_, zs3net_, zs3net_st_, cagnet_st_,
cagnet_reference_, cagnet_two-phase_).
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
"""
import argparse
import concurrent.futures as futures
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATASET_CONFIG = os.path.join("configs", "synthetic_scenes", "cagnet_tiny_synthetic_scenes.yaml")

# method -> (run name = config prefix, base run it continues, gamma: "zero" or "model")
METHODS = {
    "spnet": ("spnet", None, "zero"),
    "spnet-c": ("spnet-c", None, "model"),
    "zs3net": ("zs3net", None, "model"),
    "zs3net+st": ("zs3net_st", "zs3net", "model"),
    "cagnet": ("cagnet", None, "model"),
    "cagnet+st": ("cagnet_st", "cagnet", "model"),
    # Calibrated variants (MODEL.CALIBRATION, as SPNet-c): a second network each; not in the default list.
    "zs3net-c": ("zs3net-c", None, "model"),
    "cagnet-c": ("cagnet-c", None, "model"),
    # The authors' two-run recipe (SOLVER.PHASES.MIXED; cagnet_reference_*.yaml); not in the default list.
    "cagnet-reference": ("cagnet_reference", None, "model"),
    # The built-in CaGNet on the authors' schedule (cagnet_two-phase_*.yaml); not in the default list.
    "cagnet-two-phase": ("cagnet_two-phase", None, "model"),
}
# calibrated run -> the uncalibrated run whose network it shares when both are asked for
SAME_NETWORK = {"zs3net-c": "zs3net", "cagnet-c": "cagnet"}
DEFAULT_METHODS = ["spnet", "spnet-c", "zs3net", "zs3net+st", "cagnet", "cagnet+st"]
LABELS = {"spnet": "SPNet", "spnet-c": "SPNet-c", "zs3net": "ZS3Net", "zs3net+st": "ZS3Net+ST",
          "cagnet": "CaGNet", "cagnet+st": "CaGNet+ST",
          "zs3net-c": "ZS3Net-c", "cagnet-c": "CaGNet-c", "cagnet-reference": "CaGNet, reference recipe",
          "cagnet-two-phase": "CaGNet, two-phase"}
METRICS = [("hIoU", "hIoU"), ("mIoU", "mIoU"), ("mIoU-seen", "mIoU seen"), ("mIoU-unseen", "mIoU unseen"),
           ("pACC", "pixel acc."), ("pACC-seen", "pixel acc. seen"), ("pACC-unseen", "pixel acc. unseen"),
           ("mACC", "mean acc."), ("mACC-seen", "mean acc. seen"), ("mACC-unseen", "mean acc. unseen"),
           ("AUSUC", "AUSUC")]
RESULTS = "zs_sem_seg_results.json"
DONE = "benchmark_done.json"
SCORES = "val_scores.npz"


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
                   help="instead of Table 1, the paper's ablations of CaGNet (cagnet/utils/ablations.py): 'all' or "
                        "a comma-separated subset of table2,table3,table4,table5,supplementary; each row is a config "
                        "override of --dataset-config. With the --output of a Table 1 run, its CaGNet runs are reused")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: write the tables from the runs that have finished (a row counts its seeds)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- scoring one run
def _load_cfg(config_file: str, opts: List[str]):
    import torch

    from detectron2.config import get_cfg

    from cagnet import add_cagnet_config

    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    from cagnet.data import apply_dataset_options

    apply_dataset_options(cfg)
    return cfg


def score_run(run_dir: str) -> None:
    """Uncalibrated test-set statistics of a finished run and its gamma, with the config the run
    was trained with (its config.yaml). Run in a fresh process (``--score-run``), like training:
    the code that scores is the code that trained, even if the project changed meanwhile."""
    import torch

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from cagnet.data.dataset_mapper import ZeroShotSemSegDatasetMapper, dataset_label_lut
    from cagnet.evaluation.calibration import collect_score_statistics
    from cagnet.modeling import SemanticSegmentorWithTTA, build_model_from_checkpoint

    cfg = _load_cfg(os.path.join(run_dir, "config.yaml"), [])
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


# ---------------------------------------------------------------------- the benchmark
class Progress:
    def __init__(self, path: str, total: int):
        self.path, self.total, self.done, self.start = path, total, 0, time.perf_counter()
        self.lock = threading.Lock()

    def __call__(self, msg: str, finished: bool = False):
        with self.lock:
            self.done += int(finished)
            elapsed = time.perf_counter() - self.start
            line = f"[{self.done}/{self.total} done, {elapsed / 60:5.1f} min] {msg}"
            print(line, flush=True)
            with open(self.path, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")


def method_config(dataset_config: str, run: str) -> str:
    folder, base = os.path.split(dataset_config)
    if not base.startswith("cagnet_"):
        raise ValueError(f"--dataset-config must be a dataset's CaGNet config (cagnet_*.yaml), got {dataset_config}")
    path = os.path.join(folder, run + "_" + base[len("cagnet_"):])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config for run {run!r}: expected {path}")
    return path


def plan(args) -> Dict[str, Dict]:
    """The runs to make, by name: config, base run, overrides."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose from {list(METHODS)}")
    method_opts: Dict[str, List[str]] = {}
    for spec in args.method_opts:
        name, _, rest = spec.partition(":")
        if name.strip() not in METHODS:
            raise SystemExit(f"--method-opts: unknown method {name!r}")
        method_opts.setdefault(METHODS[name.strip()][0], []).extend(shlex.split(rest))
    runs: Dict[str, Dict] = {}
    for m in methods:
        run, base, _ = METHODS[m]
        if m == "spnet" and "spnet-c" in methods:
            continue  # the SPNet-c run at gamma = 0
        for r in ([base] if base else []) + [run]:
            runs.setdefault(r, {"config": method_config(args.dataset_config, r), "base": None, "opts": method_opts.get(r, [])})
        runs[run]["base"] = base
    return runs


def freeze_configs(args, runs: Dict[str, Dict]) -> None:
    """Every seed of a run uses one config: the resolved config (file + overrides) is written to
    DIR/configs/<run>.yaml at the first invocation and used from then on. A later invocation whose
    resolved config differs (an edited config file, other overrides) is an error, so that finished
    and resumed runs never mix configs."""
    os.makedirs(os.path.join(args.output, "configs"), exist_ok=True)
    for name, spec in runs.items():
        resolved = _load_cfg(spec["config"], list(args.opts) + list(spec["opts"])).dump()
        frozen = os.path.join(args.output, "configs", f"{name}.yaml")
        if os.path.isfile(frozen):
            # Compared as configs of today's code (keys added since, at their defaults, are no change).
            if yaml.safe_load(_load_cfg(frozen, []).dump()) != yaml.safe_load(resolved):
                raise SystemExit(
                    f"The resolved config of {name!r} ({os.path.relpath(spec['config'], REPO)} + overrides) differs "
                    f"from the one this benchmark started with ({frozen}): use another --output, or delete "
                    f"{frozen} and the runs made with it"
                )
        else:
            with open(frozen + ".tmp", "w") as f:
                f.write(resolved)
            os.replace(frozen + ".tmp", frozen)
        spec["source_config"], spec["config"], spec["opts"] = spec["config"], frozen, []


def share_networks(args, runs: Dict[str, Dict]) -> None:
    """A calibrated run whose uncalibrated run is also planned takes that run's network
    (spec["network_of"]) if their frozen configs differ only in MODEL.CALIBRATION: the main
    network of a calibrated run is trained exactly as the uncalibrated one (gamma is applied at
    test time only), so training it twice would repeat the same computation."""
    for name, other in SAME_NETWORK.items():
        if name not in runs or other not in runs:
            continue
        a, b = (yaml.safe_load(_load_cfg(runs[r]["config"], []).dump()) for r in (name, other))
        for cfg in (a, b):
            cfg["MODEL"].pop("CALIBRATION", None)
            cfg.pop("OUTPUT_DIR", None)
        if a == b:
            runs[name]["network_of"] = other
        else:
            print(f"{name}: its config differs from {other}'s in more than MODEL.CALIBRATION; it trains its own network")


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


def run_of(method: str, methods: List[str]) -> str:
    return "spnet-c" if method == "spnet" and "spnet-c" in methods else METHODS[method][0]


class RunPreempted(Exception):
    """A train_net run stopped at a preemption signal after saving its checkpoint: resume later."""


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
    if not (os.path.isfile(os.path.join(out, "model_final.pth")) and _results_file(out)):
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


def _results_file(run_dir: str) -> Optional[str]:
    inference = os.path.join(run_dir, "inference")
    if not os.path.isdir(inference):
        return None
    for name in sorted(os.listdir(inference)):
        path = os.path.join(inference, name, RESULTS)
        if os.path.isfile(path):
            return path
    return None


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


def _waits_for(spec: Dict) -> Optional[str]:
    """The run whose model_final.pth this run needs first: a +ST run's base, or the network a
    calibrated run shares (None: it starts from scratch)."""
    return spec["base"] or spec.get("network_of")


def schedule(runs: Dict[str, Dict], seeds: List[int]) -> List[Tuple[str, int]]:
    """The order in which (run, seed) jobs start when a slot is free and their base is done:
    first the runs that others wait for (a +ST run's base, a shared network), so that no slot
    idles on a dependency; within that, longest first (a calibrated run with its own network
    trains two)."""
    waited_for = {_waits_for(spec) for spec in runs.values()} - {None}
    weight = {"cagnet-c": 0, "cagnet": 1, "zs3net-c": 2, "zs3net": 3, "spnet-c": 4, "spnet": 5}
    return sorted(((r, s) for r in runs for s in seeds), key=lambda j: (j[0] not in waited_for, weight.get(j[0], 9), j[1]))


def run_all(args, runs: Dict[str, Dict], seeds: List[int], progress: Progress,
            preempted: Optional[Dict] = None, stop: Optional[threading.Event] = None) -> Dict:
    """All (run, seed) jobs, --jobs at a time, a +ST run after its base run; returns failures.
    Preempted runs go to ``preempted`` (not failures); after one, or once ``stop`` is set, no
    further run starts."""
    pending = schedule(runs, seeds)
    finished, failed, running = set(), {}, {}
    preempted = {} if preempted is None else preempted
    stop = stop or threading.Event()
    with futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        while pending or running:
            if stop.is_set() or preempted:
                pending = []  # the node is being taken back: resume at the next invocation
            for job in list(pending):
                base = _waits_for(runs[job[0]])
                if base and (base, job[1]) in failed:
                    pending.remove(job)
                    failed[job] = f"its base run {base} failed"
                    progress(f"{job[0]} seed {job[1]}: skipped ({failed[job]})", finished=True)
                elif len(running) < max(1, args.jobs) and (not base or (base, job[1]) in finished):
                    pending.remove(job)
                    running[pool.submit(run_job, args, job[0], runs[job[0]], job[1], progress)] = job
            if not running:
                break
            done, _ = futures.wait(list(running), timeout=args.status_every, return_when=futures.FIRST_COMPLETED)
            if not done:
                progress("running: " + ", ".join(f"{r} seed {s} ({_run_status(args, r, s)})" for r, s in running.values()))
            for fut in done:
                job = running.pop(fut)
                try:
                    fut.result()
                    finished.add(job)
                except RunPreempted as e:
                    preempted[job] = str(e)
                    progress(f"{job[0]} seed {job[1]}: {e}; it resumes when the benchmark is run again")
                except Exception as e:  # report and go on with the other runs
                    failed[job] = str(e)
                    progress(f"{job[0]} seed {job[1]}: FAILED ({e})", finished=True)
    return failed


def _run_jobs(args, runs: Dict[str, Dict], seeds: List[int], progress: Progress):
    """run_all (nothing with --tables-only) under preemption signals: (failures, None), or after a
    preemption (failures, the preempted exit status) with the line that says how to resume."""
    if args.tables_only:
        return {}, None
    preempted, stop = {}, threading.Event()
    _pass_signals_on(stop)
    failed = run_all(args, runs, seeds, progress, preempted, stop)
    if not (preempted or stop.is_set()):
        return failed, None
    from cagnet.engine.preemption import PREEMPTED_EXIT_STATUS, resume_command

    print(f"Preempted ({len(preempted)} run(s) saved a checkpoint). Run the same command again to resume: "
          f"{resume_command()}", flush=True)
    return failed, PREEMPTED_EXIT_STATUS


# ---------------------------------------------------------------------- tables and figure
def evaluate(args, methods: List[str], seeds: List[int]):
    """Per method and seed: metrics at the method's gamma, the curve and AUSUC."""
    from cagnet.evaluation.calibration import area_under_curve, calibration_curve, load_score_statistics

    rows, curves, warnings = [], {}, []
    for m in methods:
        run = run_of(m, methods)
        for seed in seeds:
            out = os.path.join(args.output, "runs", run, f"seed{seed}")
            if not os.path.isfile(os.path.join(out, DONE)):
                continue
            with open(os.path.join(out, "gamma.json")) as f:
                info = json.load(f)
            gamma = 0.0 if METHODS[m][2] == "zero" else info["gamma"]
            stats = load_score_statistics(os.path.join(out, SCORES), extra_edges=(gamma,))
            res = stats.metrics(gamma, info["class_names"])
            gammas, acc_seen, acc_unseen = calibration_curve(stats)
            res["AUSUC"] = 100.0 * area_under_curve(acc_unseen, acc_seen)
            curves.setdefault(m, []).append((acc_unseen, acc_seen, res["mACC-unseen"] / 100, res["mACC-seen"] / 100))
            # The statistics must reproduce the run's own evaluation (at the run's gamma).
            path = _results_file(out)
            if path and METHODS[m][2] == "model":
                with open(path) as f:
                    ref = json.load(f)
                diff = max(abs(res[k] - ref[k]) for k in ("mIoU", "mIoU-seen", "mIoU-unseen") if ref.get(k) is not None)
                if diff > 0.05:
                    warnings.append(f"{m} seed {seed}: statistics differ from the run's evaluation by {diff:.3f} mIoU points")
            rows.append({"method": m, "seed": seed, "gamma": gamma, **{k: res[k] for k, _ in METRICS}})
    return rows, curves, warnings


def _test_dataset(args, runs: Dict[str, Dict], seeds: List[int]) -> Optional[str]:
    for name in runs:
        for seed in seeds:
            path = os.path.join(args.output, "runs", name, f"seed{seed}", "gamma.json")
            if os.path.isfile(path):
                with open(path) as f:
                    return json.load(f)["dataset"]
    return None


def _mean_std(values: List[float]):
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else 0.0)


def _fmt(mean: float, std: float, n: int) -> str:
    """'mean ± std' in a table; a single seed has no spread to show."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def write_tables(args, methods: List[str], rows: List[Dict], seeds: List[int], wall_s: float, dataset: str) -> str:
    with open(os.path.join(args.output, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "seed", "gamma"] + [k for k, _ in METRICS])
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    header = ["method", "seeds"] + [label for _, label in METRICS]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with open(os.path.join(args.output, "table1.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seeds"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")])
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            if not mine:
                md.append(f"| {LABELS[m]} | 0 | " + " | ".join("–" for _ in METRICS) + " |")
                continue
            stats = [_mean_std([r[k] for r in mine]) for k, _ in METRICS]
            w.writerow([LABELS[m], len(mine)] + [f"{x:.4f}" for ms in stats for x in ms])
            md.append(f"| {LABELS[m]} | {len(mine)} | " + " | ".join(_fmt(a, b, len(mine)) for a, b in stats) + " |")
    text = (
        f"# Table 1 on {dataset}\n\n"
        f"Mean ± sample standard deviation over seeds {','.join(map(str, seeds))}; all values in percent. "
        "hIoU = 2 S U / (S + U) of the seen and unseen mIoU; pixel and mean (per-class) accuracy over all, seen and "
        "unseen ground-truth pixels; AUSUC = 100 x area under the seen-vs-unseen mean-accuracy curve as the "
        "calibration constant sweeps over the seen scores. SPNet-c uses the gamma its run selected without unseen "
        "labels (SPNet: the same network at gamma = 0).\n\n" + "\n".join(md) +
        f"\n\nWall time of this invocation: {wall_s / 60:.1f} min (--jobs {args.jobs}, --threads {args.threads}).\n"
    )
    with open(os.path.join(args.output, "table1.md"), "w") as f:
        f.write(text)
    return text


def plot_curves(args, methods: List[str], curves: Dict, rows: List[Dict], dataset: str) -> str:
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
        auc = _mean_std([r["AUSUC"] for r in rows if r["method"] == m])
        shared = run_of(m, methods) != METHODS[m][0]
        for j, (x, y, ox, oy) in enumerate(curves[m]):
            ax.plot(100 * x, 100 * y, color=c, lw=1.6 if shared else 1.2, alpha=0.8, ls="--" if shared else "-",
                    zorder=3 if shared else 2,
                    label=f"{LABELS[m]} (AUSUC {auc[0]:.1f} ± {auc[1]:.1f})" if j == 0 else None)
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


# ---------------------------------------------------------------------- ablations
def run_ablations(args, start: float) -> int:
    """The paper's ablation tables: every distinct row is one run (all seeds) of the dataset's
    CaGNet config with the row's overrides; scored like Table 1's runs."""
    from detectron2.data import MetadataCatalog

    from cagnet.utils.ablations import select_tables, unique_runs

    cfg = _load_cfg(args.dataset_config, list(args.opts))
    meta = MetadataCatalog.get((cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)[0])
    tables = select_tables(args.ablations, len(meta.seen_class_ids), len(meta.unseen_class_ids))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    extra = [o for spec in args.method_opts if spec.partition(":")[0].strip() == "cagnet"
             for o in shlex.split(spec.partition(":")[2])]
    runs = {name: {"config": args.dataset_config, "base": None, "opts": list(overrides) + extra}
            for name, overrides in unique_runs(tables).items()}
    for name in runs:
        METHODS.setdefault(name, (name, None, "model"))
        LABELS.setdefault(name, name)
    freeze_configs(args, runs)
    progress = Progress(os.path.join(args.output, "progress.log"), len(runs) * len(seeds))
    progress(f"ablations {[t[0] for t in tables]}: {len(runs)} runs x {len(seeds)} seeds ({args.jobs} at a time)")
    failed, status = _run_jobs(args, runs, seeds, progress)
    if status is not None:
        return status
    rows, _, warnings = evaluate(args, list(runs), seeds)
    text = write_ablation_tables(args, tables, rows, seeds, time.perf_counter() - start, meta.name)
    print("\n" + text)
    for w in warnings:
        print("WARNING:", w)
    if failed:
        print("FAILED runs:\n" + "\n".join(f"  {r} seed {s}: {e}" for (r, s), e in failed.items()))
        return 1
    return 0


def write_ablation_tables(args, tables, rows: List[Dict], seeds: List[int], wall_s: float, dataset: str) -> str:
    from cagnet.utils.ablations import row_slug

    keys = [("hIoU", "hIoU"), ("mIoU", "mIoU"), ("mIoU-seen", "mIoU seen"), ("mIoU-unseen", "mIoU unseen"),
            ("AUSUC", "AUSUC")]
    out = [f"# CaGNet ablations on {dataset}\n",
           f"Mean ± sample standard deviation over seeds {','.join(map(str, seeds))}, in percent; every row is "
           f"{os.path.relpath(os.path.abspath(args.dataset_config), REPO)} with the overrides shown. Paper: Pascal-VOC "
           "hIoU where our reference notes have it.\n"]
    with open(os.path.join(args.output, "ablations.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "row", "run", "overrides", "seeds"] + [f"{k}_{s}" for k, _ in keys for s in ("mean", "std")]
                   + ["paper_voc_hIoU"])
        for key, title, table_rows in tables:
            out += [f"## {title}\n", "| row | overrides | seeds | " + " | ".join(lbl for _, lbl in keys) + " | paper VOC hIoU |",
                    "|" + "---|" * (len(keys) + 4)]
            for row in table_rows:
                run = row_slug(row)
                mine = [r for r in rows if r["method"] == run]
                stats = [_mean_std([r[k] for r in mine]) if mine else (float("nan"), float("nan")) for k, _ in keys]
                paper = f"{row.paper_voc_hiou:.2f}" if row.paper_voc_hiou is not None else "–"
                shown = " ".join(row.overrides) or "(none)"
                out.append(f"| {row.label} | `{shown}` | {len(mine)} | " + " | ".join(_fmt(a, b, len(mine)) for a, b in stats)
                           + f" | {paper} |")
                w.writerow([key, row.label, run, shown, len(mine)] + [f"{x:.4f}" for ms in stats for x in ms]
                           + [row.paper_voc_hiou if row.paper_voc_hiou is not None else ""])
            out.append("")
    out.append(f"Wall time of this invocation: {wall_s / 60:.1f} min (--jobs {args.jobs}, --threads {args.threads}).")
    text = "\n".join(out) + "\n"
    with open(os.path.join(args.output, "ablations.md"), "w") as f:
        f.write(text)
    return text


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
    if args.ablations is not None:
        return run_ablations(args, start)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = plan(args)
    freeze_configs(args, runs)
    share_networks(args, runs)
    progress = Progress(os.path.join(args.output, "progress.log"), len(runs) * len(seeds))
    progress(f"{len(runs)} runs x {len(seeds)} seeds for {methods} ({args.jobs} at a time, {args.threads} thread(s) each)")
    failed, status = _run_jobs(args, runs, seeds, progress)
    if status is not None:
        return status
    rows, curves, warnings = evaluate(args, methods, seeds)
    dataset = _test_dataset(args, runs, seeds) or os.path.basename(args.dataset_config)
    wall = time.perf_counter() - start
    text = write_tables(args, methods, rows, seeds, wall, dataset)
    png = plot_curves(args, methods, curves, rows, dataset)
    print("\n" + text)
    print(f"Calibration curves: {png}")
    for w in warnings:
        print("WARNING:", w)
    if failed:
        print("FAILED runs:\n" + "\n".join(f"  {r} seed {s}: {e}" for (r, s), e in failed.items()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
