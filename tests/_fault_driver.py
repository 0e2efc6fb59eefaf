# Copyright (c) CaGNet-D2 contributors.
"""tools/train_net.py with faults injected at chosen iterations (tests of test_cluster_faults.py).

    python tests/_fault_driver.py <train_net arguments>

The faults come from the environment and act in every worker (spawned workers import this file
again as their main module, so the patch below applies there too):

* CAGNET_TEST_SIGNAL_AT=k: rank 0 sends SIGTERM to itself during iteration k (only to itself:
  the other workers must learn it at the step boundary) and waits until its handler has it; with
  CAGNET_TEST_SIGNAL_LAUNCHER=1 to the launcher instead (which passes it on to every worker).
  The run must stop at the boundary of iteration k.
* CAGNET_TEST_SECOND_SIGNAL=1: one more SIGTERM while the preemption checkpoint is being written
  (after its bytes, before the rename).
* CAGNET_TEST_FAIL_AT=k, CAGNET_TEST_FAIL_RANK=r: rank r raises during iteration k.
* CAGNET_TEST_HANG_AT=k, CAGNET_TEST_HANG_RANK=r: rank r sleeps for an hour during iteration k
  (stuck as in a collective that never returns).
* CAGNET_TEST_PID_DIR=d: each worker writes its process id to d/rank<r>.
"""
import os
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from detectron2.utils import comm  # noqa: E402

from cagnet.engine import preemption  # noqa: E402


def _env(name: str) -> int:
    return int(os.environ.get(name, -1))


def before_step(self):
    it, rank = self.trainer.iter, comm.get_rank()
    pid_dir = os.environ.get("CAGNET_TEST_PID_DIR")
    if pid_dir and it == self.trainer.start_iter:
        with open(os.path.join(pid_dir, f"rank{rank}"), "w") as f:
            f.write(str(os.getpid()))
    if it == _env("CAGNET_TEST_SIGNAL_AT") and rank == 0:
        to_launcher = os.environ.get("CAGNET_TEST_SIGNAL_LAUNCHER") and comm.get_world_size() > 1
        os.kill(os.getppid() if to_launcher else os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
    if it == _env("CAGNET_TEST_FAIL_AT") and rank == _env("CAGNET_TEST_FAIL_RANK"):
        raise RuntimeError(f"simulated failure of rank {rank} at iteration {it}")
    if it == _env("CAGNET_TEST_HANG_AT") and rank == _env("CAGNET_TEST_HANG_RANK"):
        time.sleep(3600)


preemption.PreemptionHook.before_step = before_step

if os.environ.get("CAGNET_TEST_SECOND_SIGNAL"):
    _fsync = os.fsync

    def fsync_with_a_signal(fd):
        hooks = [h for h in preemption.PreemptionHook._instances if h.saving]
        if hooks:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs now, in the middle of the save
        _fsync(fd)

    os.fsync = fsync_with_a_signal
    _init = preemption.PreemptionHook.__init__

    def init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        preemption.PreemptionHook._instances.append(self)

    preemption.PreemptionHook._instances = []
    preemption.PreemptionHook.__init__ = init

if __name__ == "__main__":
    import train_net

    train_net.cli(sys.argv[1:])
