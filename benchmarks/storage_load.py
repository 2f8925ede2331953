"""How many workers one study store carries: N simulated workers (real processes) on one study.

    python benchmarks/storage_load.py                 # PostgreSQL at N = 8,16,32,64; SQLite at 2,4,8
    python benchmarks/storage_load.py --quick         # under a minute (CI, tests/test_storage_load.py)

Each worker (benchmarks/load_worker.py) runs hpo's own storage and worker loop with real
heartbeats and sleeps instead of training, so the database, not the CPU, is what is loaded.
Per run: finished trials per second, p50/p99 latency of study.ask, trial.report and
study.tell, the peak of PostgreSQL connections to the run's database (sampled from
pg_stat_activity), and the invariants read back from the study: no duplicate trial number, no
lost trial (every trial a worker asked for is in the store and finished), none left RUNNING.
Each PostgreSQL run has a fresh database (dropped after); each SQLite run a fresh file.
Prints a Markdown table and writes JSON (--json, default benchmarks/results/storage_load.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbouncer
from support import POSTGRES, fresh_database

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "load_worker.py"
DEFAULT_SERVER = POSTGRES
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Plan:
    postgres: tuple[int, ...] = (8, 16, 32, 64)
    sqlite: tuple[int, ...] = (2, 4, 8)
    trials_per_worker: int = 3
    epochs: int = 5
    epoch_seconds: float = 6.0  # 30 s trials (hpo's default trial on one core: 15-30 s): 64 workers ask ~2 per s
    heartbeat_interval: int = 2
    wall_limit_s: float = 300.0


QUICK = Plan(postgres=(4,), sqlite=(2,), trials_per_worker=2, epochs=2, epoch_seconds=0.2, wall_limit_s=45.0)


def run(
    backend: str, n: int, plan: Plan, server: sqlalchemy.URL, workdir: Path, via: sqlalchemy.URL | None = None
) -> dict[str, Any]:
    """One run of n workers on a fresh store; what it measured and what the study holds after.

    `via`: the server as the workers reach it (through pgbouncer), when not directly.
    """
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    with ExitStack() as stack:
        stack.callback(admin.dispose)
        if backend == "postgresql":
            url = stack.enter_context(fresh_database(server, prefix="hpo_load"))
            database = sqlalchemy.make_url(url).database or ""
            worker_url = (via or server).set(database=database).render_as_string(hide_password=False)
        else:
            database = f"hpo_load_{uuid.uuid4().hex[:10]}"
            url = worker_url = f"sqlite:///{workdir / (database + '.db')}"
        from hpo.store.connect import open_storage

        storage = open_storage(url)
        optuna.create_study(study_name="load", storage=storage, direction="maximize")
        storage.engine.dispose()  # the parent holds no connection while the workers run
        record, workers = _measure(backend, n, plan, worker_url, database, admin, workdir)
        record.update(_invariants(url, workers))  # read directly, not through pgbouncer
        record.update(_latencies(workers, record["finished"]))
        return record


def _measure(
    backend: str, n: int, plan: Plan, url: str, database: str, admin: sqlalchemy.Engine, workdir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    target = n * plan.trials_per_worker
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs, results, logs = [], [], []
    for i in range(n):
        results.append(workdir / f"{database}-{i}.json")
        logs.append(workdir / f"{database}-{i}.log")
        config = {
            "url": url,
            "study": "load",
            "target": target,
            "epochs": plan.epochs,
            "epoch_seconds": plan.epoch_seconds,
            "heartbeat_interval": plan.heartbeat_interval,
            "connect_timeout": 60,
            "result": str(results[-1]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(config)],
                cwd=ROOT,
                env=env,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[-1].open("w"),
            )
        )
    connections = _Sampler(admin, database) if backend == "postgresql" else None
    deadline = time.monotonic() + plan.wall_limit_s + 240  # imports of n processes on a few cores
    ready = sum(_wait_ready(p, deadline) for p in procs)
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_times()
    go = time.time()
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    timed_out = _wait_all(procs, time.monotonic() + plan.wall_limit_s)
    wall = time.time() - go
    busy, total = (after - before for after, before in zip(_cpu_times(), cpu_before))
    peak = connections.stop() if connections else None
    workers = [json.loads(r.read_text()) if r.exists() else {"error": "no result (killed)"} for r in results]
    stderr = "".join(log.read_text(errors="replace") for log in logs)
    record = {
        "backend": backend,
        "workers": n,
        "target": target,
        "ready": ready,
        "timed_out": timed_out,
        "wall_s": round(wall, 2),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "machine_cpu_busy": round(busy / total, 3) if total else None,
        "peak_connections": peak,
        "peak_connections_per_worker": round(peak / n, 2) if peak is not None else None,
        "worker_errors": [w["error"] for w in workers if w["error"]],
        "database_is_locked": stderr.count("database is locked"),
        "torch_imported": any(w.get("torch_imported") for w in workers),
        "max_worker_rss_mib": round(max(w.get("max_rss_mib", 0) for w in workers), 1),
    }
    return record, workers


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (all processes, not only this benchmark's)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _wait_ready(proc: subprocess.Popen, deadline: float) -> bool:
    """Whether the worker printed "ready" (imports done, study loaded) before the deadline."""
    line = [""]
    reader = threading.Thread(target=lambda: line.__setitem__(0, proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    return line[0].strip() == "ready"


def _wait_all(procs: list[subprocess.Popen], deadline: float) -> bool:
    """Wait for every worker; kill the ones still running at the deadline (then True)."""
    late = False
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late = True
            proc.kill()
            proc.wait()
    return late


class _Sampler:
    """The peak number of connections to one database, from pg_stat_activity every 50 ms."""

    def __init__(self, admin: sqlalchemy.Engine, database: str) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
        self._conn = admin.connect()  # to the server's own database: not counted
        self._database = database
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._conn.execute(self._query, {"db": self._database}).scalar_one())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._conn.close()
        return self.peak


def _invariants(url: str, workers: list[dict[str, Any]]) -> dict[str, Any]:
    from hpo.store.connect import open_storage

    storage = open_storage(url)
    trials = optuna.load_study(study_name="load", storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    numbers = [t.number for t in trials]
    state = {t.number: t.state for t in trials}
    asked = [number for w in workers for number in w.get("asked", [])]
    finished = [t for t in trials if t.state in FINISHED]
    span = (
        (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
        if finished
        else 0
    )
    retry_of = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}

    def recovered(number: int) -> bool:
        """Finished, or failed (its worker's heartbeat was late) and retried until a retry finished."""
        return state.get(number) in FINISHED or (number in retry_of and recovered(retry_of[number]))

    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished]
    return {
        "finished": len(finished),
        "mean_trial_s": round(sum(durations) / len(durations), 2) if durations else None,
        "trials_per_s": round(len(finished) / span, 2) if span else 0.0,
        "duplicate_numbers": len(numbers) - len(set(numbers)) + len(asked) - len(set(asked)),
        "lost": sum(state.get(number) not in FINISHED for number in asked),  # asked, not finished
        "unrecovered": sum(not recovered(number) for number in asked),  # ... and no retry of it finished either
        "running_left": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting_left": sum(t.state == TrialState.WAITING for t in trials),  # queued retries nobody needed
        "failed": sum(t.state == TrialState.FAIL for t in trials),
    }


def _latencies(workers: list[dict[str, Any]], finished: int) -> dict[str, Any]:
    """Percentiles of Optuna's calls; the store's time per finished trial, by the call that spent it."""
    out: dict[str, Any] = {}
    for op in ("ask", "suggest", "report", "should_prune", "tell"):
        samples = sorted(x for w in workers for x in w.get("latency_ms", {}).get(op, []))
        out[f"{op}_ms"] = (
            {
                "n": len(samples),
                "p50": _pct(samples, 50),
                "p99": _pct(samples, 99),
                "mean": round(sum(samples) / len(samples), 1),
            }
            if samples
            else None
        )
    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    for w in workers:
        for kind, s in w.get("storage_s", {}).items():
            seconds[kind] = seconds.get(kind, 0.0) + s
            calls[kind] = calls.get(kind, 0) + w["storage_calls"][kind]
    main_s = sum(s for kind, s in seconds.items() if kind != "heartbeat")
    loop_s = sum(w.get("loop_s", 0.0) for w in workers)
    out["storage_share_of_worker_time"] = round(main_s / loop_s, 4) if loop_s else None
    per_trial = (lambda x: round(x / finished, 1)) if finished else (lambda x: None)
    out["storage_main_ms_per_trial"] = per_trial(1e3 * main_s)
    out["storage_heartbeat_ms_per_trial"] = per_trial(1e3 * seconds.get("heartbeat", 0.0))
    out["storage_ms_per_trial_by_call"] = {kind: per_trial(1e3 * s) for kind, s in sorted(seconds.items())}
    out["storage_calls_per_trial_by_call"] = {kind: per_trial(n) for kind, n in sorted(calls.items())}
    return out


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def _pct(samples: list[float], q: float) -> float:
    return round(samples[min(len(samples) - 1, int(len(samples) * q / 100))], 1)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| store | N | finished | trials/s | ask p50/p99 ms | report p50/p99 ms | tell p50/p99 ms | peak conns "
        "(per worker) "
        "| dup / lost (unrecovered) / left running / failed | storage ms per trial (main + heartbeat) | storage share "
        "| machine CPU busy | errors |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in runs:
        lat = [
            f"{r[f'{op}_ms']['p50']} / {r[f'{op}_ms']['p99']}" if r[f"{op}_ms"] else "-"
            for op in ("ask", "report", "tell")
        ]
        conns = (
            f"{r['peak_connections']} ({r['peak_connections_per_worker']})"
            if r["peak_connections"] is not None
            else "-"
        )
        errors = str(len(r["worker_errors"])) + (
            f", {r['database_is_locked']} locked" if r["database_is_locked"] else ""
        )
        lines.append(
            f"| {r['backend']} | {r['workers']} | {r['finished']} | {r['trials_per_s']} | {lat[0]} | {lat[1]} | "
            f"{lat[2]} "
            f"| {conns} | {r['duplicate_numbers']} / {r['lost']} ({r['unrecovered']}) / {r['running_left']} / "
            f"{r['failed']} "
            f"| {r['storage_main_ms_per_trial']} + {r['storage_heartbeat_ms_per_trial']} | "
            f"{_percent(r['storage_share_of_worker_time'])} "
            f"| {_percent(r['machine_cpu_busy'])} | {errors}"
            f"{' (timed out)' if r['timed_out'] else ''} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs, under a minute")
    parser.add_argument("--postgres", help="worker counts on PostgreSQL, e.g. 8,16,32,64 (empty: none)")
    parser.add_argument("--sqlite", help="worker counts on one SQLite file, e.g. 2,4,8 (empty: none)")
    parser.add_argument("--trials-per-worker", type=int)
    parser.add_argument("--epoch-seconds", type=float)
    parser.add_argument("--server", default=os.environ.get("HPO_TEST_POSTGRES_URL", DEFAULT_SERVER))
    parser.add_argument(
        "--pgbouncer",
        choices=("transaction", "session"),
        help="workers reach PostgreSQL through pgbouncer in this pool mode",
    )
    parser.add_argument("--pgbouncer-pool", type=int, default=20, help="pgbouncer's server connections per database")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "storage_load.json"))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = QUICK if args.quick else Plan()
    counts = {
        k: tuple(int(x) for x in v.split(",") if x)
        for k, v in (("postgres", args.postgres), ("sqlite", args.sqlite))
        if v is not None
    }
    extra = {
        k: v
        for k, v in (("trials_per_worker", args.trials_per_worker), ("epoch_seconds", args.epoch_seconds))
        if v is not None
    }
    plan = Plan(**{**asdict(plan), **counts, **extra})
    server = sqlalchemy.make_url(args.server)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-load-") as tmp, ExitStack() as stack:
        via = (
            stack.enter_context(pgbouncer.pgbouncer(server, args.pgbouncer, args.pgbouncer_pool))
            if args.pgbouncer
            else None
        )
        for backend, counts_ in (("postgresql", plan.postgres), ("sqlite", plan.sqlite)):
            for n in counts_:
                runs.append(run(backend, n, plan, server, Path(tmp), via if backend == "postgresql" else None))
                if via is not None and backend == "postgresql":
                    runs[-1]["backend"] = f"postgresql via pgbouncer ({args.pgbouncer}, pool {args.pgbouncer_pool})"
                print(table(runs[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    result = {
        "command": " ".join(["python benchmarks/storage_load.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "plan": asdict(plan),
        "machine": machine(),
        "runs": runs,
        "pgbouncer": {"version": pgbouncer.version(), "mode": args.pgbouncer, "pool": args.pgbouncer_pool}
        if args.pgbouncer
        else None,
        "max_connections": _max_connections(server) if plan.postgres else None,
    }
    print(table(runs))
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _max_connections(server: sqlalchemy.URL) -> int:
    engine = sqlalchemy.create_engine(server, poolclass=sqlalchemy.NullPool)
    with engine.connect() as conn:
        return int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())


if __name__ == "__main__":
    main()
