# Copyright (c) CaGNet-D2 contributors.
"""cagnet.benchmark: which runs a benchmark plans, their frozen configs, the order and supervision
of the (run, seed) jobs (with jobs that only record what happened), and the tables. The same
tool end to end, with real runs, is in test_methods_e2e.py."""
import csv
import os
import threading
import time

import pytest

from cagnet.benchmark.ablations import row_slug, select_tables
from cagnet.benchmark.methods import DEFAULT_METHODS, METHODS, Method
from cagnet.benchmark.plan import (
    BenchmarkConfigError, adopt_renamed_runs, freeze_configs, method_config, plan_ablation_runs, plan_runs,
)
from cagnet.benchmark.scheduler import RunPreempted, run_all, schedule
from cagnet.benchmark.tables import write_table1

from conftest import REPO, TINY_CONFIG


def _quiet(msg, finished=False):
    pass


# ---------------------------------------------------------------------- plan
def test_table1_plans_a_base_run_before_each_st_run_and_reads_spnet_from_spnet_c():
    runs = plan_runs(TINY_CONFIG, DEFAULT_METHODS)
    assert set(runs) == {"spnet-c", "zs3net", "zs3net-st", "cagnet", "cagnet-st"}
    assert runs["zs3net-st"]["base"] == "zs3net" and runs["cagnet-st"]["base"] == "cagnet"
    assert runs["cagnet"]["base"] is None
    folder = os.path.dirname(TINY_CONFIG)
    assert runs["zs3net-st"]["config"] == os.path.join(folder, "zs3net-st_tiny_synthetic_scenes.yaml")
    # Alone, SPNet is its own run.
    assert set(plan_runs(TINY_CONFIG, ["spnet"])) == {"spnet"}


def test_every_method_has_its_config_beside_the_built_in_cagnet_config():
    for name, method in METHODS.items():
        assert os.path.isfile(method_config(TINY_CONFIG, method.run)), name
        assert "_" not in method.run  # the file prefix ends at the first underscore


def test_paper_datasets_have_every_table1_config():
    for dataset_config in ("pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc20.yaml",
                           "pascal_context/cagnet_R101_os8_bs8_crop368_50k_context33.yaml",
                           "coco_stuff/cagnet_R101_os8_bs8_crop368_46k_cocostuff171.yaml"):
        runs = plan_runs(os.path.join(REPO, "configs", dataset_config), DEFAULT_METHODS + ["cagnet-reference"])
        assert all(os.path.isfile(spec["config"]) for spec in runs.values())


def test_method_options_go_to_their_run_only():
    runs = plan_runs(TINY_CONFIG, ["zs3net", "zs3net+st"], ["zs3net+st: SOLVER.MAX_ITER 7", "zs3net: SEED 3"])
    assert runs["zs3net-st"]["opts"] == ["SOLVER.MAX_ITER", "7"] and runs["zs3net"]["opts"] == ["SEED", "3"]


@pytest.mark.parametrize("methods, opts, match", [
    (["cagnet", "pointrend"], [], "Unknown methods \\['pointrend'\\]"),
    (["cagnet"], ["pointrend: SEED 1"], "--method-opts 'pointrend: SEED 1'"),
    (["cagnet"], ["cagnet SEED 1"], "expected 'METHOD: KEY VALUE"),
])
def test_bad_method_lists_are_named(methods, opts, match):
    with pytest.raises(BenchmarkConfigError, match=match):
        plan_runs(TINY_CONFIG, methods, opts)


def test_dataset_config_must_be_a_cagnet_config_with_the_runs_beside_it(tmp_path):
    with pytest.raises(BenchmarkConfigError, match="must be a dataset's CaGNet config"):
        method_config(os.path.join(REPO, "configs", "synthetic_scenes", "spnet_tiny_synthetic_scenes.yaml"), "spnet")
    lonely = tmp_path / "cagnet_mine.yaml"
    lonely.write_text(f"_BASE_: {TINY_CONFIG}\n")
    with pytest.raises(BenchmarkConfigError, match=f"run .zs3net.: expected {tmp_path}/zs3net_mine.yaml"):
        plan_runs(str(lonely), ["zs3net+st"])


def test_ablation_rows_with_the_same_overrides_share_one_run():
    tables, runs = plan_ablation_runs(TINY_CONFIG, "table2,table4", 15, 5, ["cagnet: SOLVER.MAX_ITER 9", "zs3net: SEED 1"])
    rows = [row for _, _, table_rows in tables for row in table_rows]
    assert [t[0] for t in tables] == ["table2", "table4"]
    assert len(runs) == len({row_slug(r) for r in rows}) == len(rows) - 1  # the full CaGNet row is in both tables
    for row in rows:
        spec = runs[row_slug(row)]
        assert spec["config"] == TINY_CONFIG and spec["opts"] == list(row.overrides) + ["SOLVER.MAX_ITER", "9"]
    with pytest.raises(ValueError, match="unknown tables \\['table9'\\]"):
        select_tables("table9", 15, 5)


def test_frozen_configs_are_reused_and_a_changed_config_is_refused(tmp_path):
    runs = plan_runs(TINY_CONFIG, ["cagnet"])
    freeze_configs(str(tmp_path), runs, ["SOLVER.MAX_ITER", "5"])
    frozen = tmp_path / "configs" / "cagnet.yaml"
    assert runs["cagnet"]["config"] == str(frozen) and runs["cagnet"]["source_config"] == TINY_CONFIG
    assert "MAX_ITER: 5" in frozen.read_text()
    freeze_configs(str(tmp_path), plan_runs(TINY_CONFIG, ["cagnet"]), ["SOLVER.MAX_ITER", "5"])  # same: fine
    with pytest.raises(BenchmarkConfigError, match="differs from the one this benchmark started with"):
        freeze_configs(str(tmp_path), plan_runs(TINY_CONFIG, ["cagnet"]), ["SOLVER.MAX_ITER", "6"])
    assert "MAX_ITER: 5" in frozen.read_text()  # never overwritten


def test_a_benchmark_directory_with_the_old_run_names_is_adopted(tmp_path):
    (tmp_path / "runs" / "zs3net_st" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "zs3net_st" / "seed0" / "model_final.pth").write_text("x")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "zs3net_st.yaml").write_text("SEED: 0\n")
    moved = adopt_renamed_runs(str(tmp_path))
    assert len(moved) == 2
    assert (tmp_path / "runs" / "zs3net-st" / "seed0" / "model_final.pth").read_text() == "x"
    assert (tmp_path / "configs" / "zs3net-st.yaml").is_file() and not (tmp_path / "runs" / "zs3net_st").exists()
    assert adopt_renamed_runs(str(tmp_path)) == []
    (tmp_path / "runs" / "cagnet_st").mkdir()
    (tmp_path / "runs" / "cagnet-st").mkdir()
    with pytest.raises(BenchmarkConfigError, match="both exist"):
        adopt_renamed_runs(str(tmp_path))


# ---------------------------------------------------------------------- schedule and supervision
def test_schedule_starts_the_runs_others_wait_for_first():
    """A slot never idles on a dependency that a free slot could have been training: the bases
    of +ST runs and the networks that calibrated runs share start before anything else."""
    shared = {"cagnet": {"base": None}, "cagnet-c": {"base": None, "network_of": "cagnet"}}
    assert schedule(shared, [0, 1, 2])[:3] == [("cagnet", 0), ("cagnet", 1), ("cagnet", 2)]
    # Without the shared network the calibrated run trains two networks: longest first.
    own = {"cagnet": {"base": None}, "cagnet-c": {"base": None}}
    assert schedule(own, [0])[0] == ("cagnet-c", 0)
    runs = [r for r, _ in schedule(plan_runs(TINY_CONFIG, DEFAULT_METHODS), [0, 1])]
    assert runs[:6] == ["cagnet", "cagnet", "zs3net", "zs3net", "spnet-c", "spnet-c"]
    assert sorted(runs[6:]) == ["cagnet-st", "cagnet-st", "zs3net-st", "zs3net-st"]


class FakeJobs:
    """Jobs that sleep a little and record when they started and ended; some fail or are preempted."""

    def __init__(self, fail=(), preempt=()):
        self.fail, self.preempt = set(fail), set(preempt)
        self.lock = threading.Lock()
        self.running, self.most_at_once, self.events = 0, 0, []

    def __call__(self, run, spec, seed):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.events.append(("start", run, seed))
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
            self.events.append(("end", run, seed))
        if (run, seed) in self.fail:
            raise RuntimeError("exit status 1")
        if (run, seed) in self.preempt:
            raise RunPreempted("preempted")
        return {}


def test_jobs_run_a_few_at_a_time_and_each_after_its_base():
    runs = plan_runs(TINY_CONFIG, DEFAULT_METHODS)
    jobs = FakeJobs()
    assert run_all(runs, [0, 1], jobs, _quiet, jobs=2, status_every=0.01) == {}
    assert jobs.most_at_once == 2 and len(jobs.events) == 2 * 2 * len(runs)
    for st, base in (("zs3net-st", "zs3net"), ("cagnet-st", "cagnet")):
        for seed in (0, 1):
            assert jobs.events.index(("end", base, seed)) < jobs.events.index(("start", st, seed))


def test_a_failed_base_skips_its_st_run_of_that_seed_only():
    runs = plan_runs(TINY_CONFIG, ["zs3net", "zs3net+st", "cagnet"])
    jobs = FakeJobs(fail={("zs3net", 1)})
    failed = run_all(runs, [0, 1], jobs, _quiet, jobs=2)
    assert failed == {("zs3net", 1): "exit status 1", ("zs3net-st", 1): "its base run zs3net failed"}
    started = {(r, s) for kind, r, s in jobs.events if kind == "start"}
    assert ("zs3net-st", 0) in started and ("zs3net-st", 1) not in started and ("cagnet", 1) in started


def test_after_a_preemption_or_a_stop_nothing_further_starts():
    runs = plan_runs(TINY_CONFIG, ["cagnet", "zs3net"])
    preempted = {}
    jobs = FakeJobs(preempt={("cagnet", 0)})
    assert run_all(runs, [0, 1, 2], jobs, _quiet, jobs=1, preempted=preempted) == {}
    assert list(preempted) == [("cagnet", 0)]
    assert [e for e in jobs.events if e[0] == "start"] == [("start", "cagnet", 0)]
    stop = threading.Event()
    stop.set()
    jobs = FakeJobs()
    assert run_all(runs, [0], jobs, _quiet, jobs=2, stop=stop) == {} and jobs.events == []


# ---------------------------------------------------------------------- tables
def test_table1_gives_mean_and_sample_std_and_dashes_for_a_method_without_runs(tmp_path):
    metrics = ("hIoU", "mIoU", "mIoU-seen", "mIoU-unseen", "pACC", "pACC-seen", "pACC-unseen", "mACC", "mACC-seen",
               "mACC-unseen", "AUSUC")
    rows = [{"method": "cagnet", "seed": s, "gamma": 0.0, **{k: v for k in metrics}} for s, v in ((0, 10.0), (1, 14.0))]
    rows.append({"method": "zs3net", "seed": 0, "gamma": 0.5, **{k: 20.0 for k in metrics}})
    methods = {m: METHODS[m] for m in ("cagnet", "zs3net")}
    methods["spnet"] = Method("spnet-c", "SPNet", gamma="zero")
    text = write_table1(str(tmp_path), methods, rows, [0, 1], "toy", footer="Wall time: 1 min.")
    assert "| CaGNet | 2 | 12.00 ± 2.83 |" in text  # sample std of (10, 14)
    assert "| ZS3Net | 1 | 20.00 |" in text  # one seed: no spread shown
    assert "| SPNet | 0 | – |" in text and text.rstrip().endswith("Wall time: 1 min.")
    with open(tmp_path / "table1.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert set(table) == {"CaGNet", "ZS3Net"} and float(table["CaGNet"]["hIoU_std"]) == pytest.approx(2.828427, abs=1e-4)
    with open(tmp_path / "runs.csv") as f:
        assert [(r["method"], r["gamma"]) for r in csv.DictReader(f)] == [("cagnet", "0.0"), ("cagnet", "0.0"),
                                                                          ("zs3net", "0.5")]
