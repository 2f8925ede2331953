"""What workers live through: database outages against real `hpo optimize` processes.

Each scenario starts 2 workers (one torch thread each) on a fresh database of the local
PostgreSQL, waits until both train, does something to the server, and waits for the study:

    stop 5 s      the server stopped for 5 s while trials train (a failover, an upgrade)
    restart       pg_ctlcluster restart (about 2 s)
    terminate     every connection of the study's database terminated, server up
    down > limit  the server stopped past --connect-timeout 5 (then started again)

It reports each worker's exit status and the lines it printed about the store, how long the
store was away as the workers saw it, and the invariants: finished trials, FAIL, RUNNING and
trials run twice. Needs the local server (127.0.0.1:5432, user postgres) and restarts it:
run it alone. Usage: HPO_DATA_DIR=... python benchmarks/outages.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SPEC = """[study]
name = "outage"
pruner = "none"
[train]
folds = 2
epochs = 8
train_pairs = 200
[space]
lr = { low = 1e-4, high = 1e-2, log = true }
conv1_channels = 8
conv2_channels = 16
hidden = 32
"""


def pg(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, capture_output=True
    )


def admin(sql: str, **params: Any) -> Any:
    engine = sqlalchemy.create_engine(SERVER, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    with engine.connect() as conn:
        result = conn.execute(sqlalchemy.text(sql), params)
        return result.scalar() if result.returns_rows else None


def running(url: str) -> int:
    try:
        trials = optuna.load_study(study_name="outage", storage=url).get_trials(deepcopy=False)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):
        return 0
    return sum(t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in trials)


def scenario(name: str, act: Any, spec: Path, trials: int, timeout: float) -> dict[str, Any]:
    db = f"hpo_outage_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE DATABASE "{db}"')
    url = SERVER.rsplit("/", 1)[0] + f"/{db}"
    argv = [
        sys.executable,
        "-m",
        "hpo",
        "optimize",
        "--spec",
        str(spec),
        "--trials",
        str(trials),
        "--storage",
        url,
        "--threads",
        "1",
        "--jobs",
        "1",
        "--heartbeat-interval",
        "2",
        "--connect-timeout",
        str(timeout),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        while running(url) < 2 and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        act(db)
        errs = [p.communicate(timeout=600)[1] for p in procs]
        if name.startswith("down"):
            pg("start")
            rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            errs.append(rerun.stderr)
        study = optuna.load_study(study_name="outage", storage=url).get_trials()
    finally:
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
            pg("start")
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    said = [line for err in errs for line in err.splitlines() if "study store" in line]
    away = [float(m) for line in said for m in re.findall(r"back after ([\d.]+) s", line)]
    seeds = [t.user_attrs.get("seed_trial") for t in study]
    return {
        "scenario": name,
        "exit": [p.returncode for p in procs],
        "away_s": max(away) if away else None,
        "finished": sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study),
        "fail": sum(t.state == TrialState.FAIL for t in study),
        "running": sum(t.state == TrialState.RUNNING for t in study),
        "run_twice": len(seeds) - len(set(seeds)),
        "said": sorted(
            {
                re.sub(r"\d+\.\d+ s", "N s", line.split(": ", 1)[-1] if line.startswith("worker") else line)
                for line in said
            }
        ),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    def stop_for(seconds: float) -> Any:
        return lambda db: (pg("stop"), time.sleep(seconds), pg("start"))

    def terminate(db: str) -> None:
        admin("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :db", db=db)

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "outage.toml"
        spec.write_text(SPEC)
        rows = [
            scenario("stop 5 s", stop_for(5), spec, args.trials, 120),
            scenario("restart", lambda db: pg("restart"), spec, args.trials, 120),
            scenario("terminate", terminate, spec, args.trials, 120),
            scenario("down > limit", lambda db: (pg("stop"), time.sleep(12)), spec, args.trials, 5),
        ]
    print(
        "| scenario | exit codes | away (s) | finished | FAIL | RUNNING | run twice |\n| --- | --- | --- | --- | "
        "--- | --- | --- |"
    )
    for r in rows:
        print(
            f"| {r['scenario']} | {r['exit']} | {r['away_s'] or '-'} | {r['finished']} | {r['fail']} | "
            f"{r['running']} | {r['run_twice']} |"
        )
    for r in rows:
        print(f"\n{r['scenario']}:", *(f"\n  {line}" for line in r["said"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
