"""One worker versus two on one PostgreSQL study: trials per minute and time spent in storage calls.

    HPO_DATA_DIR=../shared/data/mnist-5k python benchmarks/workers.py --trials 20 --epochs 5

Each configuration runs the same study (default spec, same seed, pruning off so every trial
does the same amount of work) in a fresh database, one torch thread per worker process. Workers
are real `hpo optimize` processes whose RDBStorage methods are wrapped with timers; the storage
share is the time each worker's main thread spent inside storage calls (Optuna's heartbeat
thread is reported apart: it does not block training). Configurations alternate over repeats;
medians are reported. Results go to benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from support import POSTGRES, fresh_database

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVER = POSTGRES


def instrumented_worker(report: str, options: str) -> None:
    """Run app.optimize(OPTIONS as JSON) with every RDBStorage method timed; write the totals to `report` (JSON)."""
    import functools

    import optuna

    from hpo.app import OptimizeOptions, Silent, optimize

    local = threading.local()
    totals = {"main_s": 0.0, "main_calls": 0, "other_threads_s": 0.0, "other_calls": 0}
    lock = threading.Lock()

    def timed(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            if getattr(local, "depth", 0):
                return method(*args, **kwargs)  # count the outermost call only
            local.depth = 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                local.depth = 0
                spent = time.perf_counter() - start
                main = threading.current_thread() is threading.main_thread()
                with lock:
                    totals["main_s" if main else "other_threads_s"] += spent
                    totals["main_calls" if main else "other_calls"] += 1

        return wrapper

    storage_cls = optuna.storages.RDBStorage
    for name in dir(storage_cls):
        attr = getattr(storage_cls, name)
        if callable(attr) and (not name.startswith("_") or name == "_get_stale_trial_ids") and name != "__init__":
            setattr(storage_cls, name, timed(attr))
    start = time.perf_counter()
    optimize(OptimizeOptions(**json.loads(options)), Silent())
    totals["process_s"] = time.perf_counter() - start
    Path(report).write_text(json.dumps(totals))


def run_configuration(workers: int, args: argparse.Namespace, server: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    with fresh_database(server) as url:
        reports = [Path(tempfile.mkstemp(suffix=".json")[1]) for _ in range(workers)]
        options = json.dumps(
            {
                "trials": args.trials,
                "epochs": args.epochs,
                "pruner": "none",
                "threads": 1,
                "storage": url,
                "study": "bench",
            }
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            start = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(r), options],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for r in reports
            ]
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"worker failed: {err[-2000:]}")
            wall = time.perf_counter() - start
            trials = optuna.load_study(study_name="bench", storage=url).get_trials()
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            first = min(t.datetime_start for t in done)
            last = max(t.datetime_complete for t in done)
            totals = [json.loads(r.read_text()) for r in reports]
        finally:
            for r in reports:
                r.unlink(missing_ok=True)
    busy = (last - first).total_seconds()
    return {
        "workers": workers,
        "trials": len(done),
        "wall_s": round(wall, 2),
        "trials_per_min": round(len(done) / wall * 60, 3),
        "trials_per_min_first_to_last_trial": round(len(done) / busy * 60, 3),
        "storage_share_main_thread": round(sum(t["main_s"] for t in totals) / sum(t["process_s"] for t in totals), 4),
        "storage_s_main_thread": round(sum(t["main_s"] for t in totals), 2),
        "storage_calls_main_thread": sum(t["main_calls"] for t in totals),
        "heartbeat_thread_storage_s": round(sum(t["other_threads_s"] for t in totals), 2),
        "worker_process_s": round(sum(t["process_s"] for t in totals), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs per trial (the spec's 25 is slow on a shared machine)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--server", default=os.environ.get("HPO_TEST_POSTGRES_URL", DEFAULT_SERVER))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "workers.json")
    args = parser.parse_args()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
            result = run_configuration(workers, args, args.server)
            runs[workers].append(result)
            print(json.dumps(result), flush=True)
    summary = {
        "config": {
            "trials": args.trials,
            "epochs": args.epochs,
            "pruner": "none",
            "threads_per_worker": 1,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "median": {
            str(w): {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "workers"} for w, rs in runs.items()
        },
        "runs": runs,
    }
    one, two = summary["median"]["1"], summary["median"]["2"]
    summary["speedup_two_vs_one"] = round(two["trials_per_min"] / one["trials_per_min"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["median"], indent=2))
    print(f"two workers vs one: {summary['speedup_two_vs_one']}x trials per minute")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        instrumented_worker(sys.argv[2], sys.argv[3])
    else:
        main()
