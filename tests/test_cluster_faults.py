# Copyright (c) CaGNet-D2 contributors.
"""Runs on a shared cluster (docs/CLUSTER.md): a preemption signal, a dead worker, a full disk,
time-based checkpoints. The signal and worker tests run tools/train_net.py through
tests/_fault_driver.py, which injects the fault at a chosen iteration."""
import errno
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from detectron2.engine import HookBase

from cagnet.engine import CaGNetTrainer
from cagnet.engine.preemption import PREEMPTED_EXIT_STATUS, Preempted, PreemptionHook
from cagnet.utils.atomic_file import FileSaveError, atomic_write

from _tool_helpers import load_tool
from conftest import REPO, TINY_CONFIG, tiny_cfg

DRIVER = os.path.join(REPO, "tests", "_fault_driver.py")
# The tiny config of conftest.tiny_cfg as train_net options; no test set (evaluation is not tested here).
OPTS = ["DATASETS.TRAIN", '("synthetic_scenes_mini_train",)', "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", 8, "SOLVER.CHECKPOINT_PERIOD", 2,
        "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", 2, "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", 2, "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", 2,
        "DATALOADER.NUM_WORKERS", 0, "MODEL.ASPP_L.OUT_CHANNELS", 16, "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", "[32]",
        "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", 32, "MODEL.CAGNET.FINETUNE_PIXELS", 256, "SEED", 3, "MODEL.DEVICE", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out, workers=1, resume=False, extra=(), timeout=300, **faults):
    """(exit status, output, seconds) of the driver; ``faults``: CAGNET_TEST_<NAME> variables."""
    args = [sys.executable, DRIVER, "--config-file", TINY_CONFIG, *(["--resume"] if resume else [])]
    if workers > 1:
        args += ["--num-gpus", str(workers), "--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
    args += [*map(str, OPTS), "SOLVER.IMS_PER_BATCH", str(2 * workers), *map(str, extra), "OUTPUT_DIR", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", **{f"CAGNET_TEST_{k.upper()}": str(v) for k, v in faults.items()})
    start = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def _same_final_weights(a, b):
    sd_a = torch.load(a / "model_final.pth", weights_only=False)
    sd_b = torch.load(b / "model_final.pth", weights_only=False)
    assert sd_a["trainer"]["iteration"] == sd_b["trainer"]["iteration"] == 7
    for key in sd_a["model"]:
        assert torch.equal(sd_a["model"][key], sd_b["model"][key]), key
    for key in ("optimizer", "optimizer_d"):
        for p, state in sd_a["trainer"]["_trainer"][key]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sd_b["trainer"]["_trainer"][key]["state"][p][name]))


# ---------------------------------------------------------------------- preemption
@pytest.mark.parametrize("workers", [1, 2], ids=["1-process", "2-process-gloo"])
def test_sigterm_saves_at_the_step_boundary_and_resume_equals_the_uninterrupted_run(tiny_scenes, tmp_path, workers):
    stopped = tmp_path / "stopped"
    # SIGTERM during iteration 4 to rank 0 only (with 2 workers, rank 1 must stop at the same
    # iteration), and with one process a second SIGTERM in the middle of writing the checkpoint.
    faults = {"signal_at": 4} if workers > 1 else {"signal_at": 4, "second_signal": 1}
    # Workers that disagree on the iteration wait in different collectives: fail within a minute.
    status, log, _ = _train(stopped, workers, extra=["SOLVER.COLLECTIVE_TIMEOUT_MINUTES", 1.0], **faults)
    assert status == PREEMPTED_EXIT_STATUS, log[-3000:]
    # Iteration 4 finished, then its checkpoint (the periodic ones are at 1 and 3).
    assert (stopped / "last_checkpoint").read_text() == "model_0000004.pth"
    assert torch.load(stopped / "model_0000004.pth", weights_only=False)["trainer"]["iteration"] == 4
    assert not (stopped / "model_final.pth").exists() and not list(stopped.glob("*.tmp"))
    assert f"Resume with: {sys.executable} {DRIVER} --resume" in log
    if workers == 1:
        assert "Received SIGTERM again during the save: already stopping" in log

    status, log, _ = _train(stopped, workers, resume=True)
    assert status == 0, log[-3000:]
    full = tmp_path / "full"
    status, log, _ = _train(full, workers)
    assert status == 0, log[-3000:]
    _same_final_weights(stopped, full)


class _SignalAt(HookBase):
    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)  # in the middle of the step


@pytest.mark.parametrize("arch", ["ZS3Net", "SPNet"])
def test_staged_trainers_are_preempted_at_the_step_boundary_and_resume_exactly(tiny_scenes, tmp_path, arch):
    from cagnet.engine import ZeroShotStagedTrainer

    opts = ["MODEL.META_ARCHITECTURE", arch, "MODEL.ZS3NET.NOISE_DIM", 8, "SOLVER.MAX_ITER", 6,
            "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 2, "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 2, "SOLVER.CHECKPOINT_PERIOD", 100,
            "SEED", 1, "DATASETS.TEST", ()]
    previous, previous_term = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    torch.manual_seed(0)  # the same initial weights as the full run's
    stopped = ZeroShotStagedTrainer(tiny_cfg(tmp_path / "stopped", *opts))
    stopped.register_hooks([_SignalAt(3)])
    stopped.resume_or_load(resume=False)
    with pytest.raises(Preempted, match="Preempted by SIGUSR1 after iteration 3"):
        stopped.train()
    # The handlers are given back after a preemption too (a forked worker must die on SIGTERM).
    assert signal.getsignal(signal.SIGUSR1) == previous and signal.getsignal(signal.SIGTERM) == previous_term
    assert (tmp_path / "stopped" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "stopped" / "model_final.pth").exists()
    resumed = ZeroShotStagedTrainer(tiny_cfg(tmp_path / "stopped", *opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    torch.manual_seed(0)
    full = ZeroShotStagedTrainer(tiny_cfg(tmp_path / "full", *opts))
    full.resume_or_load(resume=False)
    full.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- a dead worker
def test_a_failing_worker_ends_the_run_within_the_timeout_and_names_its_rank(tiny_scenes, tmp_path):
    out, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    timeout_s = 12
    # Rank 1 raises at iteration 4 while rank 0 is stuck (as in a collective that never returns):
    # rank 0 must be killed once SOLVER.COLLECTIVE_TIMEOUT_MINUTES has passed.
    status, log, seconds = _train(out, 2, extra=["SOLVER.COLLECTIVE_TIMEOUT_MINUTES", timeout_s / 60],
                                  fail_at=4, fail_rank=1, hang_at=4, hang_rank=0, pid_dir=pids)
    assert status == 1, log[-3000:]
    assert "error: Worker rank 1 (process" in log and "RuntimeError: simulated failure of rank 1 at iteration 4" in log
    assert f"still running {timeout_s} s after a worker failed" in log
    for rank in (0, 1):
        pid = int((pids / f"rank{rank}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (the launcher joined it, so it is not a zombie either)
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert torch.load(out / "model_0000003.pth", weights_only=False)["trainer"]["iteration"] == 3


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_stops_training(tiny_scenes, tmp_path, monkeypatch):
    import cagnet.engine.checkpoint as checkpoint_module

    saves, torch_save = [], torch.save

    def save_into_a_full_disk(data, f):
        saves.append(f.name)
        if len(saves) == 2:  # the second periodic checkpoint: some bytes, then no space left
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return torch_save(data, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_into_a_full_disk)
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, "SOLVER.CHECKPOINT_PERIOD", 2, "TEST.EVAL_PERIOD", 0))
    trainer.test = lambda *a, **k: {}
    trainer.resume_or_load(resume=False)
    with pytest.raises(FileSaveError) as e:
        trainer.train()
    monkeypatch.undo()
    message = str(e.value)
    assert f"Could not write {tmp_path / 'model_0000003.pth'}: the disk is full (" in message
    assert " free on its filesystem)" in message and "model_0000003.pth (if any) is unchanged" in message
    assert trainer.iter == 3  # stopped there, not going on as if saved
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.glob("model_*")) == ["model_0000001.pth"]  # no temporary, no final
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=False)["trainer"]["iteration"] == 1


def test_a_full_disk_keeps_a_previous_prediction_file(tmp_path):
    from cagnet.evaluation.zero_shot_evaluator import write_label_png

    import numpy as np
    from PIL import Image

    path = tmp_path / "img.png"
    write_label_png(str(path), np.ones((4, 4), np.uint8))
    before = path.read_bytes()

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    orig = Image.Image.save
    Image.Image.save = no_space
    try:
        with pytest.raises(FileSaveError, match=f"Could not write {path}: the disk is full"):
            write_label_png(str(path), np.zeros((4, 4), np.uint8))
    finally:
        Image.Image.save = orig
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["img.png"]
    with pytest.raises(FileSaveError, match="results.json: the disk is full"):
        with atomic_write(str(tmp_path / "results.json"), "w") as f:
            f.write("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(tmp_path) == ["img.png"]


# ---------------------------------------------------------------------- time-based checkpoints
def test_checkpoint_period_minutes_saves_by_wall_time(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, "SOLVER.CHECKPOINT_PERIOD", 100, "SOLVER.CHECKPOINT_PERIOD_MINUTES", 1.0,
                                     "TEST.EVAL_PERIOD", 0))
    trainer.test = lambda *a, **k: {}
    hook = next(h for h in trainer._hooks if isinstance(h, PreemptionHook))
    hook.clock = lambda: 30.0 * trainer.iter  # each iteration takes 30 s of "wall time"
    trainer.resume_or_load(resume=False)
    trainer.train()
    names = sorted(p.name for p in tmp_path.glob("model_*"))
    assert names == ["model_0000002.pth", "model_0000004.pth", "model_0000006.pth", "model_final.pth"], names
    assert signal.getsignal(signal.SIGTERM) is not hook._handle  # the handlers are given back


# ---------------------------------------------------------------------- benchmark_methods
def test_benchmark_treats_a_preempted_run_as_resume_later(tmp_path):
    bench = load_tool("benchmark_methods")
    log = str(tmp_path / "log")
    with pytest.raises(bench.RunPreempted):
        bench._run([sys.executable, "-c", f"raise SystemExit({PREEMPTED_EXIT_STATUS})"], log, dict(os.environ))
    with pytest.raises(RuntimeError, match="exit status 3"):
        bench._run([sys.executable, "-c", "raise SystemExit(3)"], log, dict(os.environ))
