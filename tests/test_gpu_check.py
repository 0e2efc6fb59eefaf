# Copyright (c) CaGNet-D2 contributors.
"""dev/gpu_check.py (make gpu-check): a clear failure without a GPU, and every step of the script
on the CPU at tiny sizes (--device cpu --dry-run)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO


def _gpu_check(*args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "dev", "gpu_check.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_fails_clearly_without_a_gpu(tmp_path):
    proc = _gpu_check("--output", str(tmp_path))
    assert proc.returncode == 2
    assert "no CUDA GPU is available" in proc.stderr and "--device cpu --dry-run" in proc.stderr


def test_dry_run_on_the_cpu_runs_every_step(tiny_scenes, tmp_path):
    proc = _gpu_check("--device", "cpu", "--dry-run", "--output", str(tmp_path))
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for amp in ("AMP False", "AMP True"):
        assert f"{amp}: training iteration (batch 1, crop 64)" in out and f"{amp}: inference (65x65 image" in out
    assert "losses finite: True" in out and "hIoU" in out  # trained, then evaluated
    assert "DDP: skipped" in out and out.rstrip().endswith("gpu_check: all steps passed")
