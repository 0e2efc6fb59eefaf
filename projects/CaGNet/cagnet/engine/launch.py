# Copyright (c) CaGNet-D2 contributors.
"""detectron2's ``launch()`` for runs on shared machines (docs/CLUSTER.md).

Same arguments and the same workers (detectron2's ``_distributed_worker``: process group with
``timeout``, local group, device), and three differences in the launching process:

* A preemption signal it receives (``signals``) is passed on to every worker, which then stops
  at the next step boundary (preemption.py): a ``kill`` of the launcher alone, or a scheduler
  that signals only the job's first process, preempts the whole run.
* A worker that raises or dies ends the run within ``timeout``: the others usually fail at
  once in their next collective; any still alive after ``timeout`` (stuck in a collective that
  never returns) are killed. ``WorkerFailedError`` names the worker's rank and its error.
  torch's own ``join`` would SIGTERM them instead, which they would take for a preemption.
* Workers that stopped for a preemption (exit status ``PREEMPTED_EXIT_STATUS``) make it raise
  ``Preempted`` with the command to resume.
"""
import logging
import multiprocessing.connection
import os
import pickle
import signal
import sys
import time
from datetime import timedelta
from typing import Sequence

import torch.multiprocessing as mp

from detectron2.engine.launch import _distributed_worker, _find_free_port

from .preemption import PREEMPTED_EXIT_STATUS, Preempted, resume_command

__all__ = ["WorkerFailedError", "launch"]

logger = logging.getLogger(__name__)


class WorkerFailedError(RuntimeError):
    pass


def _worker(local_rank, main_func, *args):
    try:
        _distributed_worker(local_rank, main_func, *args)
    except Preempted:
        sys.exit(PREEMPTED_EXIT_STATUS)  # the checkpoint is saved; the launcher says how to resume


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0, dist_url=None,
           args=(), timeout: timedelta = timedelta(minutes=30), signals: Sequence[str] = ("SIGTERM", "SIGUSR1")):
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)  # Preempted propagates to the caller
    if dist_url == "auto":
        assert num_machines == 1, "dist_url=auto not supported in multi-machine jobs."
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    ctx = mp.start_processes(
        _worker, nprocs=num_gpus_per_machine, join=False, daemon=False, start_method="spawn",
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
    )

    def forward(signum, frame):
        for p in ctx.processes:
            if p.exitcode is None:
                os.kill(p.pid, signum)

    previous = {}
    for name in signals:
        previous[name] = signal.signal(getattr(signal, name), forward)
    try:
        _wait(ctx, timeout.total_seconds(), machine_rank * num_gpus_per_machine)
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _wait(ctx, grace_s: float, first_rank: int) -> None:
    processes = ctx.processes
    failed, deadline = [], None
    while True:
        alive = [p for p in processes if p.exitcode is None]
        newly = [i for i, p in enumerate(processes)
                 if p.exitcode not in (None, 0, PREEMPTED_EXIT_STATUS) and i not in failed]
        # The first to fail is the cause; the others typically fail after it in a collective.
        failed += sorted(newly, key=lambda i: _failure_time(ctx, i))
        if failed and deadline is None:
            deadline = time.monotonic() + grace_s
        if not alive:
            break
        if deadline is not None and time.monotonic() >= deadline:
            for p in alive:
                logger.error(f"Killing worker process {p.pid}: still running {grace_s:.0f} s after a worker failed")
                p.kill()
            for p in alive:
                p.join()
            break
        timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=timeout)
    if failed:
        i = failed[0]
        raise WorkerFailedError(_failure_message(ctx, i, first_rank + i, grace_s))
    if any(p.exitcode == PREEMPTED_EXIT_STATUS for p in processes):
        raise Preempted(f"The workers were preempted and saved a checkpoint. Resume with: {resume_command()}")


def _failure_time(ctx, i: int) -> float:
    path = ctx.error_files[i]
    return os.path.getmtime(path) if os.path.isfile(path) else float("inf")


def _failure_message(ctx, i: int, rank: int, grace_s: float) -> str:
    p, path = ctx.processes[i], ctx.error_files[i]
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            trace = pickle.load(f)
        last = trace.strip().splitlines()[-1]
        what = f"raised {last}\n{trace}"
    elif p.exitcode < 0:
        what = f"was killed by {signal.Signals(-p.exitcode).name} (e.g. out of memory)"
    else:
        what = f"exited with status {p.exitcode}"
    return (f"Worker rank {rank} (process {p.pid}) {what}\nThe run stopped: the other workers ended (or were killed "
            f"after SOLVER.COLLECTIVE_TIMEOUT_MINUTES = {grace_s / 60:g}). The last complete checkpoint is in "
            "OUTPUT_DIR (last_checkpoint): continue with --resume.")
