"""`hpo optimize --jobs N`: N worker processes on one study, started and watched by one command.

Each worker is `python -m hpo.pool OPTIONS` in a process group of its own, running the same
worker loop as a lone `hpo optimize` with one torch thread (by default), so that the machine's
cores train N trials at once. The parent creates the study first (one creator, one warm
start), draws one progress bar from the store, forwards SIGINT and SIGTERM to every worker
exactly once, and reports a worker that crashed in one line while the others go on. Leaders
are confirmed by the parent once every worker has stopped, on all the cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import optuna

from hpo.app import (
    OptimizeEvents,
    OptimizeOptions,
    OptimizeResult,
    Silent,
    check_optimize,
    confirm,
    open_study,
    optimize,
    optimize_result,
)
from hpo.errors import HpoError, first_line
from hpo.worker import Interrupted, fail_trials_of, stop_signals_raise

POLL_SECONDS = 0.5


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_jobs(jobs: str, threads: int | None) -> tuple[int, int | None]:
    """--jobs (auto or N) and --threads as (worker processes, torch threads per worker).

    auto: one worker per core with one thread each, or cores // threads workers of --threads
    threads. A lone worker keeps torch's own thread count unless --threads says otherwise.
    """
    if jobs.strip().lower() == "auto":
        n = max(1, cores() // (threads or 1))
    else:
        try:
            n = int(jobs)
        except ValueError:
            raise HpoError(f"--jobs must be auto or a number of worker processes; got '{jobs}'") from None
        if not 1 <= n <= 4 * cores():
            raise HpoError(f"--jobs must be between 1 and {4 * cores()} (4 x this machine's {cores()} cores) or auto; got {n}")
    return n, (threads or 1) if n > 1 else threads


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[str]
    report: dict[str, Any] | None = None

    def line(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


def run_pool(options: OptimizeOptions, events: OptimizeEvents) -> OptimizeResult:
    """app.optimize for options.jobs > 1: start the workers, watch them, return the study's result."""
    spec = check_optimize(options)
    study, storage = open_study(options, spec, events.notice)
    # Leaders are confirmed once all workers are done: a worker that picked them while another
    # was just asking for its last trial would miss that trial, should it lead.
    child = replace(options, jobs=1, confirm=0)
    payload = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(child).items()})
    workers = [Worker(i, _start(i, payload)) for i in range(1, options.jobs + 1)]
    events.started(study, options.trials)
    signum = None
    try:
        with _forwarding(workers) as received:
            while any(w.process.poll() is None for w in workers):
                time.sleep(POLL_SECONDS)
                events.trial_finished(study, None)
                for w in workers:
                    _collect(w, events, study, options.retries)
            signum = received[0] if received else None
    finally:
        events.stopped()
    for w in workers:
        _collect(w, events, study, options.retries)
    stopped = [w.report for w in workers if w.report and w.report["status"] == "interrupted"]
    if signum is not None or stopped:
        exc = Interrupted(signum or stopped[0]["signum"])
        exc.trials = [(r["trial"], r["retry"]) for r in stopped if r["trial"] is not None]
        raise exc
    failed = [w for w in workers if w.report is None or w.report["status"] != "done"]
    if len(failed) < len(workers):
        import torch

        torch.set_num_threads(options.jobs * (options.threads or 1))  # the workers' cores, now free
        with stop_signals_raise():
            confirm(options, spec, study, storage, events)
    return replace(optimize_result(study), failed_workers=[_failure(w) for w in failed])


def _start(index: int, payload: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_WORKER_INDEX": str(index), "PYTHONUNBUFFERED": "1"}
    # A session of its own: a terminal's Ctrl-C reaches the parent alone, which forwards it once.
    return subprocess.Popen([sys.executable, "-m", "hpo.pool", payload], stdout=subprocess.PIPE, env=env,
                            text=True, start_new_session=True)


def _collect(worker: Worker, events: Any, study: optuna.Study, retries: int) -> None:
    """Read a worker's report once it has exited; a failure is said in one line at once.

    The trial a crashed worker held is failed and queued for retry here and now, rather than
    after its heartbeat goes stale: the parent knows which process died.
    """
    if worker.report is not None or worker.process.poll() is None:
        return
    out = worker.process.stdout.read() if worker.process.stdout else ""
    last = (out.strip().splitlines() or [""])[-1]
    try:
        worker.report = json.loads(last)
    except json.JSONDecodeError:
        code = worker.process.returncode
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        worker.report = {"status": "crashed", "message": why}
    if worker.report["status"] in ("crashed", "error"):
        events.notice(_failure(worker) + "; the other workers go on")
        fail_trials_of(study, f"{socket.gethostname()}:{worker.process.pid}", retries)


def _failure(worker: Worker) -> str:
    report = worker.report or {"status": "crashed", "message": "no report"}
    return f"{worker.line()} {'failed' if report['status'] == 'error' else 'crashed'}: {report['message']}"


@contextmanager
def _forwarding(workers: list[Worker]) -> Iterator[list[int]]:
    """SIGINT and SIGTERM to the parent are passed on to every running worker, once each."""
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if received:
            return
        received.append(signum)
        for w in workers:
            if w.process.poll() is None:
                w.process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class ChildEvents(Silent):
    """A pool worker's events: silent but for its store notices, on stderr (the parent draws the bar)."""

    def __init__(self, index: str) -> None:
        self.prefix = f"worker {index}: "

    def notice(self, line: str) -> None:
        print(self.prefix + line, file=sys.stderr, flush=True)


def worker_main(payload: str) -> int:
    """One pool worker: run the study, then print one JSON line saying how it ended."""

    events = ChildEvents(os.environ.get("HPO_WORKER_INDEX", "?"))
    report: dict[str, Any]
    try:
        with stop_signals_raise():
            optimize(OptimizeOptions(**json.loads(payload)), events)
        report = {"status": "done"}
    except Interrupted as exc:
        report = {"status": "interrupted", "signum": exc.signum, "trial": exc.trial_number, "retry": exc.retry}
    except HpoError as exc:
        report = {"status": "error", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported in one line by the parent; the others go on
        report = {"status": "crashed", "message": f"{type(exc).__name__}: {first_line(exc)}"}
    print(json.dumps(report), flush=True)
    return 0 if report["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
