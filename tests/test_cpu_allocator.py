# Copyright (c) CaGNet-D2 contributors.
"""The glibc malloc tuning of the tools (cagnet/engine/cpu_allocator.py): applied once, skipped when
asked or when the user set glibc's own variables, and it removes the page faults of a training step."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO, "projects", "CaGNet", "cagnet", "engine", "cpu_allocator.py")

# A fresh process (settings are per process and applied once): load the module by path (stdlib
# only), tune or not, then count the minor page faults of 20 conv forward/backward steps.
SCRIPT = f"""
import importlib.util, json, resource
spec = importlib.util.spec_from_file_location("cpu_allocator", {MODULE!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
applied = mod.tune_cpu_allocator()
again = mod.tune_cpu_allocator()
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 64, 3, padding=2, dilation=2))
x = torch.randn(8, 3, 48, 48)
net(x).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    net(x).sum().backward()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"applied": applied, "again": again, "faults": faults, "settings": mod.MALLOPT_SETTINGS}}))
"""


def _run(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CAGNET_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _is_glibc():
    import platform

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _is_glibc(), reason="glibc's mallopt only")
def test_tuning_is_applied_once_and_removes_the_page_faults_of_a_step():
    tuned = _run()
    assert tuned["applied"] == tuned["settings"] == {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 1 << 30}
    assert tuned["again"] == tuned["applied"]  # idempotent
    untuned = _run(CAGNET_MALLOC_TUNING="0")
    assert untuned["applied"] is None
    # Measured: ~1.7k against ~80k faults (every step re-maps and zeroes its activations untuned).
    assert untuned["faults"] > 10_000
    assert tuned["faults"] < 0.2 * untuned["faults"]


@pytest.mark.skipif(not _is_glibc(), reason="glibc's mallopt only")
def test_tuning_leaves_the_users_own_malloc_variables_alone():
    result = _run(MALLOC_TRIM_THRESHOLD_="1000000")
    assert result["applied"] is None
