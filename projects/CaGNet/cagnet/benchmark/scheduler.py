# Copyright (c) CaGNet-D2 contributors.
"""Running a plan's (run, seed) jobs a few at a time: dependencies first, a +ST run after its
base, a calibrated run after the network it shares; a failed base skips its dependants; a
preempted job (or a stop request) starts nothing further, so the same command resumes later.

What a job does (train_net.py and scoring, in subprocesses) is the caller's ``start_job``; this
module only orders and supervises, so that it can be tested with jobs that do nothing.
"""
import concurrent.futures as futures
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["Progress", "RunPreempted", "waits_for", "schedule", "run_all"]

Job = Tuple[str, int]  # (run name, seed)

# Expected length, longest first (a calibrated run with its own network trains two).
_LENGTH_RANK = {"cagnet-c": 0, "cagnet": 1, "zs3net-c": 2, "zs3net": 3, "spnet-c": 4, "spnet": 5}


class RunPreempted(Exception):
    """A train_net run stopped at a preemption signal after saving its checkpoint: resume later."""


class Progress:
    """Progress lines ``[done/total done, elapsed] message`` to stdout and to a log file."""

    def __init__(self, path: str, total: int):
        self.path, self.total, self.done, self.start = path, total, 0, time.perf_counter()
        self.lock = threading.Lock()

    def __call__(self, msg: str, finished: bool = False):
        with self.lock:
            self.done += int(finished)
            elapsed = time.perf_counter() - self.start
            line = f"[{self.done}/{self.total} done, {elapsed / 60:5.1f} min] {msg}"
            print(line, flush=True)
            with open(self.path, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")


def waits_for(spec: Dict) -> Optional[str]:
    """The run whose model_final.pth this run needs first: a +ST run's base, or the network a
    calibrated run shares (None: it starts from scratch)."""
    return spec.get("base") or spec.get("network_of")


def schedule(runs: Dict[str, Dict], seeds: List[int]) -> List[Job]:
    """The order in which jobs start when a slot is free and their dependency is done: first the
    runs that others wait for, so that no slot idles on a dependency; within that, longest first."""
    waited_for = {waits_for(spec) for spec in runs.values()} - {None}
    return sorted(((r, s) for r in runs for s in seeds),
                  key=lambda j: (j[0] not in waited_for, _LENGTH_RANK.get(j[0], 9), j[1]))


def run_all(runs: Dict[str, Dict], seeds: List[int], start_job: Callable[[str, Dict, int], object],
            progress: Callable, jobs: int = 1, status_every: float = 120.0,
            describe: Optional[Callable[[str, int], str]] = None, preempted: Optional[Dict] = None,
            stop: Optional[threading.Event] = None) -> Dict[Job, str]:
    """Every (run, seed) job through ``start_job(run, spec, seed)``, ``jobs`` at a time, each after
    the job it waits for (same seed). Returns {job: why} of the failed and skipped jobs. A job that
    raises RunPreempted goes to ``preempted`` (not a failure); after one, or once ``stop`` is set,
    no further job starts. Every ``status_every`` seconds without a finished job, a progress line
    lists the running ones (``describe(run, seed)`` says where each is)."""
    pending = schedule(runs, seeds)
    finished, failed, running = set(), {}, {}
    preempted = {} if preempted is None else preempted
    stop = stop or threading.Event()
    slots = max(1, jobs)
    with futures.ThreadPoolExecutor(max_workers=slots) as pool:
        while pending or running:
            if stop.is_set() or preempted:
                pending = []  # the node is being taken back: resume at the next invocation
            for job in list(pending):
                base = waits_for(runs[job[0]])
                if base and (base, job[1]) in failed:
                    pending.remove(job)
                    failed[job] = f"its base run {base} failed"
                    progress(f"{job[0]} seed {job[1]}: skipped ({failed[job]})", finished=True)
                elif len(running) < slots and (not base or (base, job[1]) in finished):
                    pending.remove(job)
                    running[pool.submit(start_job, job[0], runs[job[0]], job[1])] = job
            if not running:
                break  # what is left waits for a base that is not planned or did not run
            done, _ = futures.wait(list(running), timeout=status_every, return_when=futures.FIRST_COMPLETED)
            if not done:
                progress("running: " + ", ".join(
                    f"{r} seed {s}" + (f" ({describe(r, s)})" if describe else "") for r, s in running.values()))
            for fut in done:
                job = running.pop(fut)
                try:
                    fut.result()
                    finished.add(job)
                except RunPreempted as e:
                    preempted[job] = str(e)
                    progress(f"{job[0]} seed {job[1]}: {e}; it resumes when the benchmark is run again")
                except Exception as e:  # report and go on with the other runs
                    failed[job] = str(e)
                    progress(f"{job[0]} seed {job[1]}: FAILED ({e})", finished=True)
    return failed
