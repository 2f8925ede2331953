"""`hpo optimize --jobs N`: N worker processes on one study, started and watched by one command.

Each worker is `python -m hpo.pool OPTIONS` in a process group of its own, running the same
worker loop as a lone `hpo optimize` with one torch thread (by default), so that the machine's
cores train N trials at once. The parent creates the study first (one creator, one warm
start), draws one progress bar from the store, forwards SIGINT and SIGTERM to every worker
exactly once, and reports a worker that crashed in one line while the others go on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
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
    open_study,
    optimize,
    optimize_result,
    study_pairs,
    tell_plateau,
)
from hpo.errors import HpoError, first_line
from hpo.search.retries import fail_trials_of
from hpo.search.signals import Interrupted, stop_signals_raise

POLL_SECONDS = 0.5
PARENT_ENV = "HPO_POOL_PARENT"  # the command's pid, which a worker must not outlive
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Workers per GPU for --jobs auto on CUDA: one until a GPU run measures that more pay (benchmarks/gpu.sh).
WORKERS_PER_GPU = 1


def cuda_devices(device: str) -> int:
    """The GPUs --device would train on: torch's CUDA device count, 0 for --device cpu or without CUDA."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_jobs(jobs: str, threads: int | None, gpus: int = 0) -> tuple[int, int | None]:
    """--jobs (auto or N) and --threads as (worker processes, torch threads per worker).

    auto: on `gpus` CUDA devices, WORKERS_PER_GPU workers per GPU (a CUDA worker's CPU threads
    only feed its GPU); else one worker per core with one thread each, or cores // threads
    workers of --threads threads. A lone worker keeps torch's own thread count unless --threads
    says otherwise.
    """
    if jobs.strip().lower() == "auto":
        n = gpus * WORKERS_PER_GPU if gpus else max(1, cores() // (threads or 1))
    else:
        try:
            n = int(jobs)
        except ValueError:
            raise HpoError(f"--jobs must be auto or a number of worker processes; got '{jobs}'") from None
        if not 1 <= n <= 4 * cores():
            raise HpoError(
                f"--jobs must be between 1 and {4 * cores()} (4 x this machine's {cores()} cores) or auto; got {n}"
            )
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
    study_pairs(options, spec)  # bad data is refused here, before the study is created
    study = open_study(options, spec, events.notice)
    child = replace(options, jobs=1)
    payload = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(child).items()})
    gpus = cuda_devices(options.device)
    workers = [Worker(i, _start(i, payload, gpus)) for i in range(1, options.jobs + 1)]
    if hasattr(events, "follow"):  # log lines: this command's workers' trials
        events.follow({f"{socket.gethostname()}:{w.process.pid}" for w in workers})
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
    tell_plateau(options, study, events)
    failed = [w for w in workers if w.report is None or w.report["status"] != "done"]
    return replace(optimize_result(study), failed_workers=[_failure(w) for w in failed])


def worker_gpu(index: int, gpus: int, visible: str | None) -> dict[str, str]:
    """The environment that gives worker `index` (1-based) one GPU of its own, round robin over
    the `gpus` devices (those of CUDA_VISIBLE_DEVICES, `visible`, where the user set it)."""
    if gpus < 2:
        return {}
    devices = visible.split(",") if visible else [str(i) for i in range(gpus)]
    return {"CUDA_VISIBLE_DEVICES": devices[(index - 1) % len(devices)].strip()}


def _start(index: int, payload: str, gpus: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_WORKER_INDEX": str(index), "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    env.update(worker_gpu(index, gpus, os.environ.get("CUDA_VISIBLE_DEVICES")))
    # A session of its own: a terminal's Ctrl-C reaches the parent alone, which forwards it once.
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.pool", payload], stdout=subprocess.PIPE, env=env, text=True, start_new_session=True
    )


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


def die_with_parent(parent: int) -> None:
    """SIGTERM this worker as soon as the command that started it is gone, SIGKILL included.

    The worker then stops as it would on `docker compose stop`: its trial in hand is failed and
    queued for retry, for the next worker. Linux delivers the signal itself (PR_SET_PDEATHSIG);
    elsewhere, and for a parent that died before this ran, a thread watches the parent's pid.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the request took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(payload: str) -> int:
    """One pool worker: run the study, then print one JSON line saying how it ended."""
    if os.environ.get(PARENT_ENV):
        die_with_parent(int(os.environ[PARENT_ENV]))
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
    except Exception as exc:
        report = {"status": "crashed", "message": f"{type(exc).__name__}: {first_line(exc)}"}
    print(json.dumps(report), flush=True)
    return 0 if report["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
