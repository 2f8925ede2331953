"""Unattended studies: real worker processes outlive a database restart, a dropped connection and
a slow server, and end plainly when the store is gone for good or a SQLite write fails."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from test_workers import (
    FINISHED,
    finish,
    message_lines,
    running_with_progress,
    start_worker,
    trials_of,
    wait_for,
)

pytestmark = pytest.mark.postgres
CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect"]
# Trials for two workers to share while the server goes away, each held PACE seconds before its
# tell so that no CPU can finish the study before the outage: unpaced, a fast machine once
# completed 40 trials in 9 s, before the stopped server was missed, and the test failed for want
# of an outage. Paced, two workers need at least 20 s, whatever the CPU.
OUTAGE_TRIALS = 40
PACE = "1"


@pytest.fixture
def paced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started from here on hold each trial PACE seconds before telling it (fault injection)."""
    monkeypatch.setenv("HPO_PAUSE_BEFORE_TELL", PACE)


def pg(action: str) -> None:
    """Stop, start or restart the local PostgreSQL cluster (tests leave it running)."""
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run([*CLUSTER, version, "main", action], check=True, capture_output=True, timeout=60)


@contextmanager
def server_left_running() -> Iterator[None]:
    try:
        yield
    finally:
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
            pg("start")


def every_worker_training(procs: list[subprocess.Popen]) -> Callable[[list[FrozenTrial]], bool]:
    """The moment to cut the store: a trial in training, and every worker in its loop.

    Workers start unevenly (imports, numba's cache): a server stopped as soon as the first one
    trains can come back before the second has opened the store, and that worker then never
    meets the outage (CI saw one worker finish its 20 trials without a word of it).
    """
    pids = {str(p.pid) for p in procs}

    def ready(trials: list[FrozenTrial]) -> bool:
        started = {str(t.user_attrs.get("worker", "")).rsplit(":", 1)[-1] for t in trials}
        return pids <= started and bool(running_with_progress(trials))

    return ready


def told_once_and_nothing_stuck(trials: list[FrozenTrial], target: int) -> None:
    """The invariants every outage must keep: target reached, nothing failed, stuck or run twice."""
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states, states
    assert sum(s in FINISHED for s in states) >= target
    seeds = [t.user_attrs["seed_trial"] for t in trials]
    assert len(seeds) == len(set(seeds)), "a trial was run twice"


def test_workers_wait_out_a_server_stopped_while_trials_train(write_spec, postgres_url, mnist_dir, paced) -> None:
    spec = write_spec(epochs=6, pruner="none")
    procs = [start_worker(spec, postgres_url, OUTAGE_TRIALS, mnist_dir, "--heartbeat-interval", 2) for _ in range(2)]
    with server_left_running():
        wait_for(postgres_url, "small", every_worker_training(procs), procs)
        pg("stop")
        time.sleep(5)
        pg("start")
    for code, _, err in map(finish, procs):
        assert code == 0, err
        assert "lost the study store" in err and "is back after" in err and "Traceback" not in err
    told_once_and_nothing_stuck(trials_of(postgres_url, "small"), OUTAGE_TRIALS)


def test_workers_survive_a_restart_while_trials_train(write_spec, postgres_url, mnist_dir, paced) -> None:
    spec = write_spec(epochs=6, pruner="none")
    procs = [start_worker(spec, postgres_url, OUTAGE_TRIALS, mnist_dir, "--heartbeat-interval", 2) for _ in range(2)]
    with server_left_running():
        wait_for(postgres_url, "small", every_worker_training(procs), procs)
        pg("restart")
    for code, _, err in map(finish, procs):
        assert code == 0, err
        assert "Traceback" not in err
    told_once_and_nothing_stuck(trials_of(postgres_url, "small"), OUTAGE_TRIALS)


def test_a_result_whose_write_meets_the_outage_is_told_exactly_once(
    write_spec, postgres_url, mnist_dir, monkeypatch
) -> None:
    monkeypatch.setenv("HPO_PAUSE_BEFORE_TELL", "4")  # fault injection: a window between training and telling
    spec = write_spec(epochs=2, pruner="none")
    proc = start_worker(spec, postgres_url, 2, mnist_dir)
    with server_left_running():
        # Both epochs reported and still RUNNING: the worker is in its pause, about to tell.
        wait_for(
            postgres_url,
            "small",
            lambda ts: [t for t in ts if t.state == TrialState.RUNNING and 2 in t.intermediate_values],
            [proc],
        )
        pg("stop")
        time.sleep(6)  # the tell runs into the stopped server and waits
        pg("start")
    code, _, err = finish(proc)
    assert code == 0, err
    assert "lost the study store" in err and "is back after" in err
    trials = trials_of(postgres_url, "small")
    told_once_and_nothing_stuck(trials, 2)
    assert len(trials) == 2


def test_workers_survive_every_connection_being_terminated(
    write_spec, postgres_url, postgres_server, mnist_dir, paced
) -> None:
    spec = write_spec(epochs=6, pruner="none")
    procs = [start_worker(spec, postgres_url, OUTAGE_TRIALS, mnist_dir, "--heartbeat-interval", 2) for _ in range(2)]
    wait_for(postgres_url, "small", every_worker_training(procs), procs)
    database = sqlalchemy.make_url(postgres_url).database
    admin = sqlalchemy.create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    with admin.connect() as conn:
        ended = conn.execute(
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :db AND pid <> "
                "pg_backend_pid()"
            ),
            {"db": database},
        ).scalar()
    assert ended >= 2
    for code, _, err in map(finish, procs):
        assert code == 0, err
        assert "Traceback" not in err
    told_once_and_nothing_stuck(trials_of(postgres_url, "small"), OUTAGE_TRIALS)


def test_a_server_down_past_the_timeout_ends_the_worker_with_one_line_and_a_rerun_finishes(
    write_spec, postgres_url, mnist_dir, paced
) -> None:
    spec = write_spec(epochs=6, pruner="none")
    # A target the worker cannot reach before the server goes (with 6, one worker once finished
    # the study in about a second, before the test saw a trial in training).
    proc = start_worker(spec, postgres_url, OUTAGE_TRIALS, mnist_dir, "--heartbeat-interval", 1, "--connect-timeout", 3)
    with server_left_running():
        before = wait_for(
            postgres_url,
            "small",
            lambda ts: any(t.state == TrialState.COMPLETE for t in ts) and running_with_progress(ts),
            [proc],
        )
        pg("stop")
        code, _, err = finish(proc, timeout=60)
    assert code == 2, err
    lines = message_lines(err)
    assert (
        lines[-1].startswith("error: the study store")
        and "did not come back within 3 s (--connect-timeout)" in lines[-1]
    ), err
    assert "Traceback" not in err
    done = {t.number for t in before if t.state in FINISHED}
    target = sum(t.state in FINISHED for t in trials_of(postgres_url, "small")) + 2  # the rerun trains
    rerun = start_worker(spec, postgres_url, target, mnist_dir, "--heartbeat-interval", 1)
    code, _, err = finish(rerun)
    assert code == 0, err
    trials = trials_of(postgres_url, "small")
    assert done <= {t.number for t in trials if t.state in FINISHED}, "finished trials are kept"
    assert not [t for t in trials if t.state == TrialState.RUNNING], "the dead worker's trial was failed and retried"
    assert sum(t.state in FINISHED for t in trials) >= target


def test_a_sqlite_write_that_fails_ends_the_worker_with_one_line_and_keeps_finished_trials(
    write_spec, tmp_path, mnist_dir
) -> None:
    spec = write_spec(epochs=1, pruner="none")
    db = tmp_path / "full.db"
    url = f"sqlite:///{db}"
    code, _, err = finish(start_worker(spec, url, 2, mnist_dir))
    assert code == 0, err
    # A file-size limit makes the next writes fail as a full disk does (root ignores read-only files).
    limit = max(db.stat().st_size, 64 * 1024) + 16 * 1024
    proc = start_worker(
        spec,
        url,
        40,
        mnist_dir,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    code, _, err = finish(proc)
    assert code == 2, err
    lines = message_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: the SQLite study store") and "failed a write" in lines[0], (
        err
    )
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    trials = trials_of(url, "small")
    assert sum(t.state in FINISHED for t in trials) >= 2
