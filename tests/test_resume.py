# Copyright (c) CaGNet-D2 contributors.
"""A run stopped mid-way and resumed equals an uninterrupted run: weights, both optimisers,
both LR schedules, the phase position and the data order."""
import json
import os

import numpy as np
import pytest
import torch

from detectron2.data import MetadataCatalog

from cagnet.data.embeddings import save_class_embeddings
from cagnet.engine import CaGNetTrainer
from cagnet.engine.output_dir import OutputDirInUseError
from cagnet.modeling import CheckpointMismatchError, DamagedCheckpointError, build_model_from_checkpoint

from _crash_helpers import train_until_crash
from _tool_helpers import LogRecords
from conftest import tiny_cfg

OPTS = ["SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 4, "TEST.EVAL_PERIOD", 0, "SEED", 3]


def _run(output_dir, crash_at=None, resume=False, extra=()):
    torch.manual_seed(123 if not resume else 456)  # a resumed run must not depend on its own init
    cfg = tiny_cfg(output_dir, *OPTS, *extra)
    trainer = CaGNetTrainer(cfg)
    trainer.test = lambda *a, **k: {}  # evaluation is not what this test is about
    trainer.resume_or_load(resume=resume)
    return train_until_crash(trainer, crash_at)


def _assert_same_state(a, b):
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_same_state(value, b[key])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        elif isinstance(value, (list, tuple)):
            assert len(value) == len(b[key])
            for x, y in zip(value, b[key]):
                _assert_same_state({"_": x}, {"_": y}) if isinstance(x, (dict, torch.Tensor)) else None
        else:
            assert value == b[key], key


def test_resume_continues_exactly(tiny_scenes, tmp_path):
    full = _run(tmp_path / "full")
    crashed = _run(tmp_path / "stopped", crash_at=6)
    # The last checkpoint before the crash is at iteration 3 (period 4); the crash hit a finetuning
    # block, so the resumed run restarts in the middle of the phase schedule.
    assert (tmp_path / "stopped" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert crashed.iter == 6 and not (tmp_path / "stopped" / "model_final.pth").exists()
    resumed = _run(tmp_path / "stopped", resume=True)
    assert resumed.start_iter == 4 and resumed.iter == full.iter == 10
    sd_full, sd_resumed = full.model.state_dict(), resumed.model.state_dict()
    for k in sd_full:
        assert torch.equal(sd_full[k], sd_resumed[k]), k
    _assert_same_state(full.optimizer.state_dict(), resumed.optimizer.state_dict())
    _assert_same_state(full.optimizer_d.state_dict(), resumed.optimizer_d.state_dict())
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert full.scheduler_d.state_dict() == resumed.scheduler_d.state_dict()
    assert [g["lr"] for g in full.optimizer.param_groups] == [g["lr"] for g in resumed.optimizer.param_groups]


def test_checkpoint_holds_both_optimizers_and_schedulers(tiny_scenes, tmp_path):
    _run(tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)
    trainer_state = ckpt["trainer"]
    assert trainer_state["iteration"] == 9
    assert {"optimizer", "optimizer_d", "seed"} <= set(trainer_state["_trainer"])
    assert set(trainer_state["hooks"]["LRSchedulers"]) == {"lr", "lr_d"}
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith(".tmp")]


# ---------------------------------------------------------------------- damaged checkpoints
def _truncate(path, keep=0.3):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path.read_bytes()


def test_resume_skips_a_damaged_checkpoint_and_still_continues_exactly(tiny_scenes, tmp_path):
    full = _run(tmp_path / "full")
    stopped = tmp_path / "stopped"
    _run(stopped, crash_at=8)
    assert (stopped / "last_checkpoint").read_text() == "model_0000007.pth"
    damaged = _truncate(stopped / "model_0000007.pth")  # e.g. a full disk while copying the run
    torch.manual_seed(456)
    trainer = CaGNetTrainer(tiny_cfg(stopped, *OPTS))
    trainer.test = lambda *a, **k: {}
    with LogRecords() as log:
        trainer.resume_or_load(resume=True)
    assert f"Skipping {stopped / 'model_0000007.pth'} (" in log.text() and "(the file is left in place)" in log.text()
    assert "cannot be read as a checkpoint" in log.text() and f"Resuming from {stopped / 'model_0000003.pth'}" in log.text()
    assert (stopped / "model_0000007.pth").read_bytes() == damaged  # not deleted, not touched
    assert trainer.start_iter == 4
    trainer.train()
    sd_full, sd_resumed = full.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(sd_full[k], sd_resumed[k]) for k in sd_full)


def test_damaged_weights_and_checkpoints_are_named(tiny_scenes, tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    trainer = CaGNetTrainer(tiny_cfg(tmp_path / "a", *OPTS, "MODEL.WEIGHTS", str(empty)))
    with pytest.raises(DamagedCheckpointError, match=f"{empty} \\(empty\\) cannot be read as a checkpoint"):
        trainer.resume_or_load(resume=False)
    # --resume with every checkpoint of the directory damaged: an error listing them, nothing loaded.
    run = tmp_path / "run"
    _run(run, crash_at=5)
    _truncate(run / "model_0000003.pth", keep=0.9)
    trainer = CaGNetTrainer(tiny_cfg(run, *OPTS))
    with pytest.raises(DamagedCheckpointError, match=f"No checkpoint in {run} can be read.*model_0000003.pth"):
        trainer.resume_or_load(resume=True)
    # tools: the same file named (eval-only, demo, ... load through build_model_from_checkpoint)
    with pytest.raises(DamagedCheckpointError, match=f"{run / 'model_0000003.pth'} \\("):
        build_model_from_checkpoint(tiny_cfg(run), str(run / "model_0000003.pth"))


def test_checkpoint_of_another_embedding_table_or_class_count_is_one_error_before_training(tiny_scenes, tmp_path):
    run = tmp_path / "run"
    _run(run, crash_at=5)
    names = MetadataCatalog.get("synthetic_scenes_mini_train").stuff_classes
    table = str(tmp_path / "table30.npz")
    vectors = np.random.default_rng(0).normal(size=(len(names), 30))
    save_class_embeddings(table, names, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ["test"])
    trainer = CaGNetTrainer(tiny_cfg(run, *OPTS, "MODEL.CAGNET.EMBEDDINGS_FILE", table))
    with pytest.raises(CheckpointMismatchError) as e:
        trainer.resume_or_load(resume=True)
    message = str(e.value)
    assert str(run / "model_0000003.pth") in message and "MODEL.CAGNET.EMBEDDINGS_FILE" in message
    assert "class_embeddings: (20, 50) in the checkpoint, (20, 30) in the model" in message.replace(
        f"({len(names)}, ", "(20, ")
    assert trainer.iter == 0

    # Weights of a model with two more classes (as tools/add_classes.py makes) for a new run.
    ckpt = torch.load(run / "model_0000003.pth", map_location="cpu", weights_only=False)
    model = ckpt["model"]
    for key in ("class_embeddings", "heads.classifier.weight", "heads.classifier.bias"):
        model[key] = torch.cat([model[key], model[key][:2]])
    more = tmp_path / "plus2.pth"
    torch.save({"model": model}, more)
    trainer = CaGNetTrainer(tiny_cfg(tmp_path / "new", *OPTS, "MODEL.WEIGHTS", str(more)))
    with pytest.raises(CheckpointMismatchError, match=f"{more} does not fit the model of this config"):
        trainer.resume_or_load(resume=False)


# ---------------------------------------------------------------------- OUTPUT_DIR of a previous run
def test_output_dir_of_a_previous_run_is_refused_unless_resumed_or_overwritten(tiny_scenes, tmp_path):
    run = tmp_path / "run"
    _run(run)
    (run / "model_0000011.pth").write_bytes((run / "model_0000007.pth").read_bytes())  # a longer earlier run's
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    one_run = [json.loads(line)["iteration"] for line in (run / "metrics.json").read_text().splitlines()]
    with pytest.raises(OutputDirInUseError, match="--resume.*OVERWRITE_OUTPUT_DIR True"):
        CaGNetTrainer(tiny_cfg(run, *OPTS)).resume_or_load(resume=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name in before} == before

    trainer = CaGNetTrainer(tiny_cfg(run, *OPTS, "OVERWRITE_OUTPUT_DIR", True))
    trainer.test = lambda *a, **k: {}
    trainer.resume_or_load(resume=False)
    assert not (run / "model_0000011.pth").exists() and not (run / "last_checkpoint").exists()
    trainer.train()
    assert (run / "model_final.pth").is_file() and not (run / "model_0000011.pth").exists()
    iterations = [json.loads(line)["iteration"] for line in (run / "metrics.json").read_text().splitlines()]
    assert iterations == one_run  # this run's metrics only, not appended to the last one's
