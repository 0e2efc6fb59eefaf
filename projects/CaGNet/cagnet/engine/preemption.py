# Copyright (c) CaGNet-D2 contributors.
"""Preemption and time-based checkpoints (docs/CLUSTER.md).

A cluster that takes a node back sends a signal (SIGTERM; SLURM's ``--signal`` often SIGUSR1)
and kills the job after a grace period. ``PreemptionHook`` turns the signals of
``SOLVER.PREEMPTION.SIGNALS`` into a clean stop: the handler only records the signal (the
optimiser step in progress is never cut), and after the step every worker learns whether any of
them was signalled (one all-reduce of a flag per step when distributed: all stop at the same
iteration even when the signal reached only some). Then the checkpoint of that iteration is
written atomically, a line says how to resume, and ``Preempted`` ends the run; the tools exit
with ``PREEMPTED_EXIT_STATUS``. A further signal during the save is only logged. ``--resume``
then continues exactly as the uninterrupted run would have (the checkpoint is the one
``SOLVER.CHECKPOINT_PERIOD`` would have written at that iteration).

The same hook saves a checkpoint every ``SOLVER.CHECKPOINT_PERIOD_MINUTES`` of wall time.
"""
import logging
import shlex
import signal
import sys
import time
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["PREEMPTED_EXIT_STATUS", "Preempted", "PreemptionHook", "resume_command"]

logger = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h ("temporary failure, try again"): distinct from 0 (done), 1 (an
# error) and 128+N (killed by signal N), so a job script can requeue on exactly this status.
PREEMPTED_EXIT_STATUS = 75


class Preempted(BaseException):
    """The run stopped at a signal after saving its checkpoint. A BaseException (like
    KeyboardInterrupt) so that ``except Exception`` blocks and detectron2's "Exception during
    training" traceback leave it alone; the trainer's ``after_train`` hooks still run."""

    def __init__(self, message: str, checkpoint: Optional[str] = None):
        super().__init__(message)
        self.checkpoint = checkpoint


def resume_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line of this process with ``--resume`` (added once)."""
    argv = list(sys.argv if argv is None else argv)
    if "--resume" not in argv:
        argv.insert(1, "--resume")  # right after the script: never among the trailing config overrides
    return shlex.join([sys.executable, *argv])


def _signal_numbers(names: Sequence[str]):
    return [getattr(signal, name) for name in names]


class PreemptionHook(HookBase):
    """Place it after every other ``after_step`` hook: the checkpoint is then the state after
    the iteration's LR step, metrics and evaluation, as a periodic checkpoint is."""

    def __init__(self, checkpointer, signals: Sequence[str] = ("SIGTERM", "SIGUSR1"), period_minutes: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.checkpointer = checkpointer
        self.signals = _signal_numbers(signals)
        self.period_s = 60.0 * period_minutes
        self.clock = clock
        self.received: Optional[int] = None  # the first signal caught
        self.saving = False
        self._previous: Dict[int, object] = {}
        self._last_save = clock()

    @classmethod
    def from_config(cls, cfg, checkpointer) -> "PreemptionHook":
        return cls(checkpointer, cfg.SOLVER.PREEMPTION.SIGNALS, cfg.SOLVER.CHECKPOINT_PERIOD_MINUTES)

    # ------------------------------------------------------------------ signals
    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            logger.warning(f"Received {name}: the run stops after the current step and saves a checkpoint")
        else:
            # A second signal (e.g. the cluster's repeat, or SIGTERM after SIGUSR1) changes nothing:
            # the save in progress runs to the end.
            logger.warning(f"Received {name} again{' during the save' if self.saving else ''}: already stopping")

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: preemption signals are not handled")  # Python allows handlers there only
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def before_train(self):
        self._last_save = self.clock()
        self.install()

    def after_train(self):
        # Given back in every case, a preemption included: the checkpoint is complete by now, and a
        # handler left behind would outlive training (processes forked later, e.g. a dataset
        # preparation pool, would then ignore the SIGTERM that ends them, and hang their parent).
        self.uninstall()

    # ------------------------------------------------------------------ step boundary
    def _any_rank_signalled(self) -> bool:
        if not self.signals:  # the same config on every worker: no collective needed
            return False
        if comm.get_world_size() == 1:
            return self.received is not None
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([0 if self.received is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_step(self):
        if self._any_rank_signalled():
            self._stop()
        elif self.period_s > 0 and self.clock() - self._last_save >= self.period_s:
            self._save("time-based checkpoint")

    def _save(self, why: str) -> str:
        name = f"model_{self.trainer.iter:07d}"
        if comm.is_main_process():  # the checkpointer writes on the main process only
            logger.info(f"Saving {why} at iteration {self.trainer.iter}")
            self.checkpointer.save(name, iteration=self.trainer.iter)
        self._last_save = self.clock()
        return f"{self.checkpointer.save_dir}/{name}.pth"

    def _stop(self):
        self.saving = True
        what = signal.Signals(self.received).name if self.received is not None else "another worker's signal"
        try:
            path = self._save(f"checkpoint for {what}")
        finally:
            self.saving = False
        comm.synchronize()  # no worker exits before the checkpoint is complete
        self.trainer.preempted = what
        message = (f"Preempted by {what} after iteration {self.trainer.iter}: saved {path}. "
                   f"Resume with: {resume_command()}")
        if comm.is_main_process():
            logger.warning(message)
        raise Preempted(message, path)
