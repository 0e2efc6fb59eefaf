# Copyright (c) CaGNet-D2 contributors.
"""Every method of the benchmark trains a few iterations and evaluates on the miniature built-in
dataset with its own config (in-process, through the trainer train_net.py picks); the +ST runs
continue a base run and train on pseudo labels; tools/benchmark_methods.py end to end."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet import add_cagnet_config
from cagnet.benchmark.plan import share_networks
from cagnet.data.dataset_mapper import training_label_lut
from cagnet.engine import CaGNetSelfTrainingTrainer, ZeroShotStagedTrainer, trainer_class
from cagnet.engine.staged_trainer import held_out_class_ids
from cagnet.evaluation.zero_shot_evaluator import load_label_map

from conftest import REPO

MINI = [
    "DATASETS.TRAIN", ("synthetic_scenes_mini_train",),
    "DATASETS.TEST", ("synthetic_scenes_mini_val",),
    "SOLVER.IMS_PER_BATCH", 2,
    "DATALOADER.NUM_WORKERS", 0,
    "MODEL.ASPP_L.OUT_CHANNELS", 16,
    "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", [32],
    "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", 32,
    "MODEL.ZS3NET.NOISE_DIM", 8,
    "MODEL.CALIBRATION.NUM_IMAGES", 8,
    "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 2,
    "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", 2,
    "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", 2,
]
RESULTS = os.path.join("inference", "synthetic_scenes_mini_val", "zs_sem_seg_results.json")


def method_cfg(method, output_dir, *opts):
    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic_scenes", f"{method}_tiny_synthetic_scenes.yaml"))
    cfg.merge_from_list([*MINI, "OUTPUT_DIR", str(output_dir), *opts])
    cfg.freeze()
    return cfg


def train(cfg):
    torch.manual_seed(0)
    trainer = trainer_class(cfg)(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _results(out):
    res = json.loads((out / RESULTS).read_text())
    assert {"hIoU", "mIoU-seen", "mIoU-unseen", "pACC-unseen", "mACC-seen"} <= set(res)
    return res


def test_spnet_and_spnet_c(tiny_scenes, tmp_path):
    spnet = train(method_cfg("spnet", tmp_path / "spnet", "SOLVER.MAX_ITER", 3))
    assert isinstance(spnet, ZeroShotStagedTrainer) and spnet.model.calibration.item() == 0
    _results(tmp_path / "spnet")

    out = tmp_path / "spnet-c"
    trainer = train(method_cfg("spnet-c", out, "SOLVER.MAX_ITER", 3))
    info = json.loads((out / "calibration" / "calibration.json").read_text())
    seen = MetadataCatalog.get("synthetic_scenes_mini_train").seen_class_ids
    names = list(MetadataCatalog.get("synthetic_scenes_mini_train").stuff_classes)
    held_out = held_out_class_ids(trainer.cfg, seen, MetadataCatalog.get("synthetic_scenes_mini_train").unseen_class_ids, names)
    assert info["held_out_classes"] == [names[i] for i in held_out] and set(held_out) <= set(seen)
    assert len(held_out) == len(MetadataCatalog.get("synthetic_scenes_mini_train").unseen_class_ids)
    assert info["num_images"] == 8 and info["gamma"] in info["candidates"]
    assert info["hIoU"] == max(info["candidate_hIoU"])
    # The calibration network never saw the held-out classes nor the real unseen ones.
    sub = torch.load(out / "calibration" / "model_final.pth", weights_only=False)
    names = sub["zero_shot_classes"]["class_names"]
    unseen = {names[i] for i in MetadataCatalog.get("synthetic_scenes_mini_train").unseen_class_ids}
    assert {names[i] for i in sub["zero_shot_classes"]["unseen_class_ids"]} == set(info["held_out_classes"]) | unseen
    # The main model carries gamma (in its checkpoint too) and was evaluated with it.
    assert trainer.model.calibration.item() == pytest.approx(info["gamma"])
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["model"]["calibration"].item() == pytest.approx(info["gamma"])
    assert not (out / "calibration" / "inference").exists()  # no test-set evaluation of the calibration net
    _results(out)


def _check_pseudo_labels(out, cfg, unseen):
    """On disk: the training labels (unseen -> ignore) with some ignored pixels set to unseen classes."""
    summary = json.loads((out / "pseudo_labels" / "summary.json").read_text())
    assert summary["top_percent"] == cfg.MODEL.SELF_TRAINING.TOP_PERCENT
    records = DatasetCatalog.get("synthetic_scenes_mini_train")
    lut = training_label_lut([MetadataCatalog.get("synthetic_scenes_mini_train")])
    added = 0
    for i, r in enumerate(records):
        train_label = lut[load_label_map(r["sem_seg_file_name"], dtype=np.uint8)]
        pseudo = load_label_map(str(out / "pseudo_labels" / "labels" / f"{i:07d}.png"), dtype=np.uint8)
        labelled = train_label != 255
        assert np.array_equal(pseudo[labelled], train_label[labelled])
        new = pseudo != train_label
        assert set(np.unique(pseudo[new]).tolist()) <= set(unseen)
        added += new.sum()
    per_class = summary["per_class"].values()
    assert added == sum(c["selected"] for c in per_class)
    assert all(c["selected"] <= np.floor(summary["top_percent"] / 100 * c["candidates"]) for c in per_class)
    return summary


@pytest.mark.parametrize("method", ["zs3net", "cagnet"])
def test_self_training_continues_a_trained_model_on_pseudo_labels(tiny_scenes, tmp_path, method):
    base = train(method_cfg(method, tmp_path / "base", "SOLVER.MAX_ITER", 6, "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 2,
                            "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 2))
    unseen = base.model.unseen_ids.tolist()
    out = tmp_path / "st"
    cfg = method_cfg(f"{method}_st", out, "SOLVER.MAX_ITER", 4, "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 2,
                     "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 2, "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 0,
                     "MODEL.SELF_TRAINING.TOP_PERCENT", 100.0, "MODEL.WEIGHTS", str(tmp_path / "base" / "model_final.pth"))
    trainer = trainer_class(cfg)(cfg)
    if method == "cagnet":
        assert isinstance(trainer, CaGNetSelfTrainingTrainer)
    trainer.resume_or_load(resume=False)
    summary = _check_pseudo_labels(out, cfg, unseen)
    assert summary["source_weights"] == str(tmp_path / "base" / "model_final.pth")
    # The training stream now reads the pseudo-labelled files (no unseen -> ignore table).
    batch = next(iter(trainer._trainer._data_loader_factory(0, 0)))
    for item in batch:
        index = [r["file_name"] for r in DatasetCatalog.get("synthetic_scenes_mini_train")].index(item["file_name"])
        pseudo = torch.as_tensor(load_label_map(str(out / "pseudo_labels" / "labels" / f"{index:07d}.png")))
        assert torch.equal(item["sem_seg"], pseudo) or torch.equal(item["sem_seg"], pseudo.flip(-1))
    trainer.train()
    _results(out)
    # A resumed run reuses the labels; without them it refuses to relabel with a half-trained model.
    (out / "pseudo_labels" / "summary.json").unlink()
    again = trainer_class(cfg)(cfg)
    with pytest.raises(RuntimeError, match="pseudo labels"):
        again.resume_or_load(resume=True)


def test_self_training_needs_a_trained_model(tiny_scenes, tmp_path):
    cfg = method_cfg("zs3net-st", tmp_path, "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", 2,
                     "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 1, "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 1)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        trainer_class(cfg)(cfg).resume_or_load(resume=False)


def _benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_methods", os.path.join(REPO, "tools", "benchmark_methods.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_methods_tool(tiny_scenes, tmp_path, capsys):
    """In this process (its runs are train_net.py subprocesses, two at a time)."""
    bm = _benchmark_module()
    out = tmp_path / "bench"
    args = ["--methods", "spnet,spnet-c", "--seeds", "0,1", "--output", str(out), "--jobs", "2",
            *map(str, MINI), "SOLVER.MAX_ITER", "3"]
    threads = torch.get_num_threads()
    try:
        assert bm.main(args) == 0
    finally:
        torch.set_num_threads(threads)  # main() sets the threads of this process
    log = capsys.readouterr().out
    assert "spnet-c seed 1: finished" in log and "WARNING" not in log
    table = (out / "table1.md").read_text()
    for row in ("| SPNet | 2 |", "| SPNet-c | 2 |"):
        assert row in table
    with open(out / "table1.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"SPNet", "SPNet-c"}
    for r in rows.values():
        assert 0 <= float(r["hIoU_mean"]) <= 100 and 0 <= float(r["AUSUC_mean"]) <= 100 and float(r["AUSUC_std"]) >= 0
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 4 and {float(r["gamma"]) for r in runs if r["method"] == "spnet"} == {0.0}
    # SPNet-c is reported at the gamma its run chose (SPNet: the same network at 0).
    for seed in (0, 1):
        info = json.loads((out / "runs" / "spnet-c" / f"seed{seed}" / "calibration" / "calibration.json").read_text())
        (row,) = [r for r in runs if r["method"] == "spnet-c" and r["seed"] == str(seed)]
        assert float(row["gamma"]) == pytest.approx(info["gamma"], abs=1e-4)
    assert (out / "calibration_curves.png").stat().st_size > 10000
    # A second invocation trains nothing and rebuilds the same table.
    try:
        assert bm.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert "training" not in capsys.readouterr().out
    assert (out / "table1.md").read_text().split("Wall time")[0] == table.split("Wall time")[0]
    # --tables-only with a seed that has no runs trains nothing and counts the finished seeds.
    args3 = [a if a != "0,1" else "0,1,2" for a in args]
    try:
        assert bm.main(["--tables-only", *args3]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "training" not in capsys.readouterr().out
    assert not (out / "runs" / "spnet-c" / "seed2").exists()
    assert "| SPNet | 2 |" in (out / "table1.md").read_text()
    # Other overrides (or an edited config file) never reuse these runs.
    with pytest.raises(SystemExit, match="differs"):
        bm.main(args + ["SOLVER.BASE_LR", "0.5"])


def test_benchmark_calibrated_run_shares_the_uncalibrated_network(tiny_scenes, tmp_path, capsys):
    """CaGNet-c beside CaGNet trains only its calibration network; its main network is CaGNet's,
    which is what a CaGNet-c run of its own trains too (checked bit for bit)."""
    bm = _benchmark_module()
    opts = [*map(str, MINI), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100"]
    threads = torch.get_num_threads()
    try:
        shared, alone = tmp_path / "shared", tmp_path / "alone"
        assert bm.main(["--methods", "cagnet,cagnet-c", "--seeds", "0", "--output", str(shared), "--jobs", "2", *opts]) == 0
        log = capsys.readouterr().out
        assert "cagnet-c seed 0: calibrating cagnet's network" in log and "cagnet-c seed 0: training" not in log
        assert bm.main(["--methods", "cagnet-c", "--seeds", "0", "--output", str(alone), *opts]) == 0
        assert "cagnet-c seed 0: training" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)

    def final(out, run):
        return torch.load(out / "runs" / run / "seed0" / "model_final.pth", map_location="cpu", weights_only=False)

    base, calibrated, own = final(shared, "cagnet"), final(shared, "cagnet-c"), final(alone, "cagnet-c")
    gamma = json.loads((shared / "runs" / "cagnet-c" / "seed0" / "calibration" / "calibration.json").read_text())["gamma"]
    assert gamma != 0.0
    # The checkpoint holds the selected gamma, and only that differs from CaGNet's network ...
    assert float(calibrated["model"]["calibration"]) == pytest.approx(gamma)
    assert float(base["model"]["calibration"]) == 0.0
    for key, value in base["model"].items():
        if key != "calibration":
            assert torch.equal(value, calibrated["model"][key]), key
    # ... which is the network a CaGNet-c run trains by itself (same seed, config and threads).
    for key, value in own["model"].items():
        if key != "calibration":
            assert torch.equal(value, base["model"][key]), key
    with open(shared / "runs.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["method"] == "cagnet-c"]
    assert float(row["gamma"]) == pytest.approx(gamma, abs=1e-4)
    # Overrides that change training (not only MODEL.CALIBRATION) make it train its own network.
    runs = {"cagnet": {"config": str(shared / "configs" / "cagnet.yaml")},
            "cagnet-c": {"config": str(shared / "configs" / "cagnet-c.yaml")}}
    share_networks(runs)
    assert runs["cagnet-c"]["network_of"] == "cagnet"
    other = tmp_path / "other.yaml"
    other.write_text((shared / "configs" / "cagnet-c.yaml").read_text().replace("\nSEED: 0\n", "\nSEED: 5\n"))
    runs = {"cagnet": {"config": str(shared / "configs" / "cagnet.yaml")}, "cagnet-c": {"config": str(other)}}
    share_networks(runs)
    assert "network_of" not in runs["cagnet-c"]
