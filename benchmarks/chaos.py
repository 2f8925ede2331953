"""Every trial accounted for under chaos: workers on a private PostgreSQL under a seeded schedule of faults.

N worker processes (`hpo optimize --jobs 1`, restarted when they die, as a Kubernetes Job
restarts its pods) share one study on a PostgreSQL server of this script's own (initdb in a
temporary folder, another port, run as user postgres: the shared server is left alone) for
--minutes, while a seeded schedule injects faults:

    kill        a random worker SIGKILLed every 20 to 60 s
    sigstop     a worker stopped past the heartbeat grace period, then continued
    terminate   every connection of the study's database terminated (pg_terminate_backend)
    restart     the server restarted (twice)
    server down the server stopped for longer than 30 s (12 s with --quick), then started
    clock skew  one worker's wall clock runs 10 minutes ahead (HPO_TEST_CLOCK_SKEW), all along

Then the faults stop, every worker is told to stop (SIGTERM) and restarted with a target a
dozen trials above the study's count, and the study is accounted for: the target reached
exactly, no trial left RUNNING, none told twice, every failed trial retried exactly once (an
"unclaimed" trial, asked for by a worker that died before its first heartbeat, had nothing to
retry), a recommendation, and no traceback in any worker's log. Prints a Markdown table and
writes JSON; exits 1 when an invariant fails. --quick runs about 2 minutes (the test suite runs it).

Usage: HPO_DATA_DIR=... python benchmarks/chaos.py [--minutes 30] [--workers 6] [--seed 0] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = """[study]
name = "chaos"
pruner = "median"
seed = 0
[train]
folds = 2
epochs = 2
batch_size = 25
train_pairs = 200
[space]
lr = { low = 1e-4, high = 1e-2, log = true }
dropout = { low = 0.0, high = 0.5 }
weight_sharing = { choices = [true, false] }
conv1_channels = 4
conv2_channels = 8
hidden = 16
"""
HEARTBEAT = 2  # seconds; a trial silent for 3 intervals is stale
RETRIES = 50  # every failure gets its retry: the accounting checks each one
FINAL_EXTRA = 12  # trials the restarted workers run after the faults stop


def pg_bin(name: str) -> str:
    return str(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))[-1])


class Server:
    """A private PostgreSQL cluster in a temporary folder, run as user postgres."""

    def __init__(self, folder: Path, port: int) -> None:
        self.data, self.port = folder / "data", port
        self.log = folder / "server.log"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "postgres", "postgres")
        self._as_postgres(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder}'\n")
        self.start()

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    def ctl(self, action: str) -> None:
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-m", "fast", action)

    def start(self) -> None:
        self.ctl("start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> Any:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            self.url(database), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool
        )
        with engine.connect() as conn:
            result = conn.execute(sqlalchemy.text(statement))
            return result.scalar() if result.returns_rows else None


@dataclass
class Slot:
    """One worker slot (a pod): its current process and every incarnation's log."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    restarts: int = 0


class Workers:
    def __init__(self, n: int, folder: Path, spec: Path, url: str, skewed: int) -> None:
        self.slots = [Slot(i) for i in range(n)]
        self.folder, self.spec, self.url, self.skewed = folder, spec, url, skewed
        self.target = 1_000_000
        self.supervise = True

    def start(self, slot: Slot) -> None:
        log = self.folder / f"worker{slot.index}-{len(slot.logs)}.log"
        slot.logs.append(log)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HPO_LOG_FORMAT": "text"}
        if slot.index == self.skewed:
            env["HPO_TEST_CLOCK_SKEW"] = "600"
        argv = [sys.executable, "-m", "hpo", "optimize", "--spec", str(self.spec), "--storage", self.url]
        argv += ["--trials", str(self.target), "--jobs", "1", "--threads", "1", "--retries", str(RETRIES)]
        argv += ["--heartbeat-interval", str(HEARTBEAT), "--connect-timeout", "300"]
        with open(log, "wb") as out:
            slot.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.folder)

    def tick(self) -> None:
        """Restart every worker that died (a Job's restartPolicy), as long as the faults go on."""
        for slot in self.slots:
            if self.supervise and slot.process is not None and slot.process.poll() is not None:
                slot.restarts += 1
                self.start(slot)

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.process is not None and s.process.poll() is None]


def schedule(rng: random.Random, seconds: float, quick: bool) -> list[tuple[float, str]]:
    """The faults and when they strike, seeded: kills every 20 to 60 s, the others once (restart twice)."""
    events, at = [], rng.uniform(20, 60)
    while at < seconds - 10:
        events.append((at, "kill"))
        at += rng.uniform(20, 60)
    for fraction, kind in ((0.15, "sigstop"), (0.3, "terminate"), (0.45, "restart"), (0.6, "server down")):
        events.append((seconds * fraction + rng.uniform(-3, 3), kind))
    events.append((seconds * 0.8 + rng.uniform(-3, 3), "restart"))
    return sorted(events)


def inject(kind: str, workers: Workers, server: Server, rng: random.Random, quick: bool) -> str:
    if kind == "kill":
        victims = workers.live()
        if not victims:
            return "kill: no live worker"
        victim = rng.choice(victims)
        victim.process.send_signal(signal.SIGKILL)
        return f"kill: SIGKILL worker {victim.index} (pid {victim.process.pid})"
    if kind == "sigstop":
        victim = rng.choice(workers.live())
        pause = 3 * HEARTBEAT + 8
        victim.process.send_signal(signal.SIGSTOP)
        _idle(workers, pause)
        victim.process.send_signal(signal.SIGCONT)
        return f"sigstop: worker {victim.index} stopped {pause} s (grace {3 * HEARTBEAT} s), then continued"
    if kind == "terminate":
        n = server.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = 'chaos' AND pid <> pg_backend_pid()"
        )
        return f"terminate: {n} connections terminated"
    if kind == "restart":
        begun = time.monotonic()
        server.ctl("restart")
        return f"restart: server restarted in {time.monotonic() - begun:.1f} s"
    if kind == "server down":
        down = 12 if quick else 35
        server.ctl("stop")
        _idle(workers, down)
        server.start()
        return f"server down: stopped {down} s, then started"
    raise ValueError(kind)


def _idle(workers: Workers, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        workers.tick()
        time.sleep(0.5)


def _wait_until_training(server: Server, workers: Workers, limit: float = 900) -> float:
    """Seconds until as many trials finished as there are workers: the faults start on trained, running workers."""
    begun = time.monotonic()
    while time.monotonic() - begun < limit:
        _idle(workers, 2)
        try:
            done = server.sql("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')", "chaos")
        except Exception:  # the schema is not there yet
            done = 0
        if done >= len(workers.slots):
            return time.monotonic() - begun
        if done == 0 and sum(s.restarts for s in workers.slots) >= 3 * len(workers.slots):
            log = max(workers.slots, key=lambda s: len(s.logs)).logs[-2]  # one that ended
            said = log.read_text()[-2000:]
            raise RuntimeError(f"the workers keep dying before any trial ends; {log.name} says:\n{said}")
    raise RuntimeError(f"the workers finished no {len(workers.slots)} trials in {limit:g} s")


def account(url: str, target: int, workers: Workers) -> dict[str, Any]:
    """The invariants, read from the store and the workers' logs."""
    import optuna
    from optuna.trial import TrialState

    from hpo.readers.results import pick_trial

    study = optuna.load_study(study_name="chaos", storage=url)
    trials = study.get_trials(deepcopy=False)
    by_state = Counter(t.state.name for t in trials)
    finished = by_state["COMPLETE"] + by_state["PRUNED"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    unclaimed = [t for t in failed if t.system_attrs.get("unclaimed")]
    # A retry's retry_history ends with the trial it retries (failed_trial names the first of the chain).
    retries_of = Counter(t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history"))
    claimed_failures = [t for t in failed if not t.system_attrs.get("unclaimed")]
    lost = [t.number for t in claimed_failures if retries_of[t.number] == 0]
    duplicated = [t.number for t in claimed_failures if retries_of[t.number] > 1]
    logs = [log for slot in workers.slots for log in slot.logs]
    texts = [log.read_text(errors="replace") for log in logs]
    logged = Counter(int(n) for text in texts for n in re.findall(r" trial (\d+) (?:COMPLETE|PRUNED) value", text))
    told_twice = sorted(n for n, c in logged.items() if c > 1)
    tracebacks = [str(log) for log, text in zip(logs, texts) if "Traceback" in text]
    try:
        best = pick_trial(study, None)
        recommendation = {"trial": best.number, "value": round(best.value, 4)}
    except Exception as exc:  # the check reports it
        recommendation = {"error": str(exc)}
    return {
        "target": target,
        "finished": finished,
        "complete": by_state["COMPLETE"],
        "pruned": by_state["PRUNED"],
        "failed": len(failed),
        "failed_unclaimed": len(unclaimed),
        "retries": sum(retries_of.values()),
        "waiting": by_state["WAITING"],
        "running": by_state["RUNNING"],
        "lost": lost,
        "duplicated": duplicated,
        "told_twice": told_twice,
        "tracebacks": tracebacks,
        "recommendation": recommendation,
        "worker_incarnations": len(logs),
    }


def checks(result: dict[str, Any]) -> dict[str, bool]:
    return {
        "target reached exactly": result["finished"] == result["target"],
        "0 RUNNING": result["running"] == 0,
        "0 told twice": not result["told_twice"],
        "every failed trial retried exactly once": not result["lost"] and not result["duplicated"],
        "a recommendation": "trial" in result["recommendation"],
        "no traceback in any log": not result["tracebacks"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    seconds = 120.0 if args.quick else args.minutes * 60
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="hpo-chaos-"))
    os.chmod(folder, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(folder / "pg", port)
    injected: list[dict[str, Any]] = []
    workers = Workers(args.workers, folder, folder / "chaos.toml", server.url("chaos"), skewed=0)
    try:
        server.sql("CREATE DATABASE chaos")
        workers.spec.write_text(SPEC)
        for slot in workers.slots:
            workers.start(slot)
        ready = _wait_until_training(server, workers)
        print(f"workers training after {ready:.0f} s; the faults begin", flush=True)
        began = time.monotonic()
        for at, kind in schedule(rng, seconds, args.quick):
            _idle(workers, at - (time.monotonic() - began))
            line = inject(kind, workers, server, rng, args.quick)
            injected.append({"at_s": round(time.monotonic() - began, 1), "kind": kind, "what": line})
            print(f"[{time.monotonic() - began:6.0f} s] {line}", flush=True)
        _idle(workers, seconds - (time.monotonic() - began))
        # The faults stop: every worker is told to stop, then all restart with a reachable target.
        workers.supervise = False
        for slot in workers.live():
            slot.process.send_signal(signal.SIGTERM)
        for slot in workers.slots:
            slot.process.wait(timeout=300)
        study = optuna.load_study(study_name="chaos", storage=server.url("chaos"))
        done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
        workers.target = done + FINAL_EXTRA
        for slot in workers.slots:
            workers.start(slot)
        exits = [slot.process.wait(timeout=1800) for slot in workers.slots]
        result = account(server.url("chaos"), workers.target, workers)
        result["final_exit_codes"] = exits
        result["fault_phase_s"] = round(seconds)
        result["workers"] = args.workers
        result["startup_s"] = round(ready)
        result["faults"] = dict(Counter(e["kind"] for e in injected))
        result["faults"]["clock skew (worker 0, +600 s)"] = 1
        result["restarts"] = sum(s.restarts for s in workers.slots)
        result["injected"] = injected
        result["checks"] = checks(result)
        result["workdir"] = str(folder)
        return result
    finally:
        for slot in workers.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGCONT)
                slot.process.kill()
        with contextlib.suppress(subprocess.CalledProcessError):
            server.ctl("stop")


def table(result: dict[str, Any]) -> str:
    rows = [("faults injected", ", ".join(f"{k} {v}" for k, v in result["faults"].items()))]
    rows += [
        ("workers", f"{result['workers']} processes, --jobs 1 each, restarted when they die"),
        ("fault phase", f"{result['fault_phase_s']} s, then all workers stopped and restarted"),
        ("worker restarts (by the supervisor)", result["restarts"]),
        ("trials finished / target", f"{result['finished']} / {result['target']}"),
        ("complete, pruned", f"{result['complete']}, {result['pruned']}"),
        ("failed (of them unclaimed)", f"{result['failed']} ({result['failed_unclaimed']})"),
        ("retries queued", result["retries"]),
        ("lost (failed, never retried)", len(result["lost"])),
        ("duplicated (retried twice)", len(result["duplicated"])),
        ("told twice", len(result["told_twice"])),
        ("stuck (RUNNING at the end)", result["running"]),
        ("left WAITING", result["waiting"]),
        ("recommendation", json.dumps(result["recommendation"])),
        ("tracebacks in logs", len(result["tracebacks"])),
    ]
    rows += [(f"check: {name}", "pass" if ok else "FAIL") for name, ok in result["checks"].items()]
    return "| | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--workers", type=int, default=None, help="worker slots (default 6, 3 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="about 2 minutes of faults (the test suite runs this)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workers = args.workers or (3 if args.quick else 6)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` too stops the private server
    if os.environ.get("HPO_DATA_DIR"):  # the workers run in a scratch folder, where a relative path means nothing
        os.environ["HPO_DATA_DIR"] = str(Path(os.environ["HPO_DATA_DIR"]).resolve())
    result = run(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
