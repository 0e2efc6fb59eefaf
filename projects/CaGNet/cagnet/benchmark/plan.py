# Copyright (c) CaGNet-D2 contributors.
"""Which runs a benchmark makes, with which config: Table 1's methods or the ablation rows.

A plan is ``{run name: spec}``, spec a dict with ``config`` (a file), ``opts`` (KEY VALUE
overrides), ``base`` (the run whose model_final.pth it continues, or None) and, once planned,
``network_of`` (a calibrated run that takes another run's network). :func:`freeze_configs` writes
each run's resolved config into the benchmark directory once, so that every seed and every later
invocation uses the same one.
"""
import logging
import os
import shlex
from typing import Dict, List, Sequence

import yaml

from .ablations import select_tables, unique_runs
from .methods import METHODS, RENAMED_RUNS, SAME_NETWORK, Method

__all__ = ["BenchmarkConfigError", "load_benchmark_config", "method_config", "parse_method_opts", "plan_runs",
           "plan_ablation_runs", "freeze_configs", "share_networks", "adopt_renamed_runs"]

logger = logging.getLogger(__name__)


class BenchmarkConfigError(ValueError):
    """A benchmark asked for something its configs or its directory cannot give."""


def load_benchmark_config(config_file: str, opts: Sequence[str] = ()):
    """The resolved, validated config of a run (file + overrides; CPU where CUDA is absent, the
    dataset's options applied): the config that train_net.py would train with, not frozen."""
    from ..utils.cli import load_config

    return load_config(config_file, opts, freeze=False)


def method_config(dataset_config: str, run: str) -> str:
    """The config of ``run`` beside a dataset's CaGNet config: the same file name with the run's
    prefix instead of ``cagnet_``."""
    folder, base = os.path.split(dataset_config)
    if not base.startswith("cagnet_"):
        raise BenchmarkConfigError(
            f"--dataset-config must be a dataset's CaGNet config (cagnet_*.yaml), got {dataset_config}")
    path = os.path.join(folder, run + "_" + base[len("cagnet_"):])
    if not os.path.isfile(path):
        raise BenchmarkConfigError(f"No config for run {run!r}: expected {path}")
    return path


def parse_method_opts(specs: Sequence[str], methods: Dict[str, Method] = METHODS) -> Dict[str, List[str]]:
    """``["cagnet: SOLVER.MAX_ITER 800", ...]`` -> {run name: overrides}."""
    opts: Dict[str, List[str]] = {}
    for spec in specs:
        name, sep, rest = spec.partition(":")
        if not sep or name.strip() not in methods:
            raise BenchmarkConfigError(f"--method-opts {spec!r}: expected 'METHOD: KEY VALUE ...' with METHOD one of "
                                       f"{list(methods)}")
        opts.setdefault(methods[name.strip()].run, []).extend(shlex.split(rest))
    return opts


def plan_runs(dataset_config: str, methods: Sequence[str], method_opts: Sequence[str] = ()) -> Dict[str, Dict]:
    """The runs Table 1's ``methods`` need: each method's run, a +ST run's base run before it, and
    no SPNet run when SPNet-c is asked for (SPNet is read from SPNet-c's run at gamma = 0)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkConfigError(f"Unknown methods {unknown}; choose from {list(METHODS)}")
    opts = parse_method_opts(method_opts)
    runs: Dict[str, Dict] = {}
    for m in methods:
        method = METHODS[m]
        if m == "spnet" and "spnet-c" in methods:
            continue
        for r in ([method.base] if method.base else []) + [method.run]:
            runs.setdefault(r, {"config": method_config(dataset_config, r), "base": None, "opts": opts.get(r, [])})
        runs[method.run]["base"] = method.base
    return runs


def plan_ablation_runs(dataset_config: str, tables_spec: str, num_seen: int, num_unseen: int,
                       method_opts: Sequence[str] = ()):
    """The paper's ablation tables (:mod:`.ablations`) as runs: every distinct row is the dataset's
    CaGNet config with the row's overrides (and the ``cagnet:`` method options); rows with the
    same overrides share one run. Returns (tables, runs)."""
    tables = select_tables(tables_spec, num_seen, num_unseen)
    extra = parse_method_opts([s for s in method_opts if s.partition(":")[0].strip() == "cagnet"]).get("cagnet", [])
    runs = {name: {"config": dataset_config, "base": None, "opts": list(overrides) + extra}
            for name, overrides in unique_runs(tables).items()}
    return tables, runs


def _frozen_path(output: str, run: str) -> str:
    return os.path.join(output, "configs", f"{run}.yaml")


def freeze_configs(output: str, runs: Dict[str, Dict], opts: Sequence[str] = ()) -> None:
    """Every seed of a run uses one config: the resolved config (file + ``opts`` + the run's own
    overrides) is written to OUTPUT/configs/<run>.yaml at the first invocation and used from then
    on (``spec["config"]`` points to it afterwards). A later invocation whose resolved config
    differs (an edited config file, other overrides) raises BenchmarkConfigError, so that finished
    and resumed runs never mix configs."""
    os.makedirs(os.path.join(output, "configs"), exist_ok=True)
    for name, spec in runs.items():
        resolved = load_benchmark_config(spec["config"], list(opts) + list(spec["opts"])).dump()
        frozen = _frozen_path(output, name)
        if os.path.isfile(frozen):
            # Compared as configs of today's code (keys added since, at their defaults, are no change).
            if yaml.safe_load(load_benchmark_config(frozen).dump()) != yaml.safe_load(resolved):
                raise BenchmarkConfigError(
                    f"The resolved config of {name!r} ({spec['config']} + overrides) differs from the one this "
                    f"benchmark started with ({frozen}): use another --output, or delete {frozen} and the runs "
                    "made with it"
                )
        else:
            with open(frozen + ".tmp", "w") as f:
                f.write(resolved)
            os.replace(frozen + ".tmp", frozen)
        spec["source_config"], spec["config"], spec["opts"] = spec["config"], frozen, []


def share_networks(runs: Dict[str, Dict]) -> List[str]:
    """A calibrated run whose uncalibrated run is also planned takes that run's network
    (``spec["network_of"]``) if their frozen configs differ only in MODEL.CALIBRATION: the main
    network of a calibrated run is trained exactly as the uncalibrated one (gamma is applied at
    test time only), so training it twice would repeat the same computation. Returns a line per
    calibrated run that trains its own network."""
    notes = []
    for name, other in SAME_NETWORK.items():
        if name not in runs or other not in runs:
            continue
        a, b = (yaml.safe_load(load_benchmark_config(runs[r]["config"]).dump()) for r in (name, other))
        for cfg in (a, b):
            cfg["MODEL"].pop("CALIBRATION", None)
            cfg.pop("OUTPUT_DIR", None)
        if a == b:
            runs[name]["network_of"] = other
        else:
            notes.append(f"{name}: its config differs from {other}'s in more than MODEL.CALIBRATION; "
                         "it trains its own network")
    return notes


def adopt_renamed_runs(output: str) -> List[str]:
    """A benchmark directory made before the runs were renamed (:data:`RENAMED_RUNS`): move each
    old run directory and frozen config to the new name, so that the same command resumes it
    instead of training again. Returns what it moved; refuses if both names exist."""
    moved = []
    for old, new in RENAMED_RUNS.items():
        for old_path, new_path in ((os.path.join(output, "runs", old), os.path.join(output, "runs", new)),
                                   (_frozen_path(output, old), _frozen_path(output, new))):
            if not os.path.exists(old_path):
                continue
            if os.path.exists(new_path):
                raise BenchmarkConfigError(f"{old_path} (the run's name before this release) and {new_path} both "
                                           "exist: keep one")
            os.replace(old_path, new_path)
            moved.append(f"{old_path} -> {new_path}")
            logger.warning(f"Run {old!r} is now called {new!r}: moved {old_path} to {new_path}")
    return moved
