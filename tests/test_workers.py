"""Many worker processes on one study: PostgreSQL and SQLite, dead and stopped workers, start-up order."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from test_bad_input import one_error_line

from hpo.search.loop import run_until
from hpo.search.retries import fail_stale_trials
from hpo.search.signals import Interrupted, SignalGuard
from hpo.search.warm_start import PUBLISHED
from hpo.store.connect import open_storage, retry_init_race

ROOT = Path(__file__).resolve().parents[1]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def start_worker(
    spec: Path, storage: str, trials: int, data_dir: Path, *extra: object, log_format: str | None = "bar", **popen: Any
) -> subprocess.Popen:
    """`hpo optimize` as its own process, one torch thread, as a worker machine would run it.

    Its stderr is a pipe, no terminal: `log_format` "bar" keeps the terminal's output (a bar, plain
    lines) that most tests read; None leaves hpo's default (log lines, hpo.log_lines).
    """
    argv = [
        sys.executable,
        "-m",
        "hpo",
        "optimize",
        "--trials",
        str(trials),
        "--spec",
        str(spec),
        "--storage",
        storage,
        "--data-dir",
        str(data_dir),
        "--threads",
        "1",
        *map(str, extra),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("HPO_LOG_FORMAT", None)
    if log_format is not None:
        env["HPO_LOG_FORMAT"] = log_format
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not finish in {timeout} s: {err[-2000:]}")
    return proc.returncode, out, err


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ")  # hpo.log_lines, stderr no terminal


def message_lines(err: str) -> list[str]:
    """A worker's stderr without its progress bar's or its log's lines (a trial, a summary, a notice)."""
    return [
        line
        for line in err.splitlines()
        if line.strip() and "━" not in line and not line.startswith("study ") and not LOG_LINE.match(line)
    ]


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def wait_for(
    url: str,
    name: str,
    condition: Callable[[list[FrozenTrial]], bool],
    procs: list[subprocess.Popen],
    timeout: float = 240,
) -> list[FrozenTrial]:
    """Poll the study until `condition` holds; fail early if every worker has already exited."""
    storage = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            storage = storage or optuna.storages.RDBStorage(url)
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):
            continue  # study or tables not created yet
        if condition(trials):
            return trials
        if all(p.poll() is not None for p in procs):
            break
    states = [(p.poll(), p.stderr.read()[-1500:] if p.poll() is not None else "") for p in procs]
    pytest.fail(f"condition not reached; workers: {states}")


def running_with_progress(trials: list[FrozenTrial], worker: str | None = None) -> list[FrozenTrial]:
    """Trials in training: RUNNING, every parameter sampled (n_params is stored just before training)."""
    return [
        t
        for t in trials
        if t.state == TrialState.RUNNING
        and "n_params" in t.user_attrs
        and (worker is None or t.user_attrs["worker"].endswith(f":{worker}"))
    ]


def frozen_in_training(
    url: str, name: str, proc: subprocess.Popen, others: list[subprocess.Popen]
) -> list[FrozenTrial]:
    """Stop `proc` (SIGSTOP) at a moment it holds a trial in training, after a first trial finished.

    Returns its trials in training. A look then a signal races the trial's end (a small trial here
    takes well under a second: CI once saw the trial finish in between); frozen first, the trial
    read is the one it holds when the caller's signal lands. The caller sends SIGCONT.
    """
    worker = str(proc.pid)
    while True:
        wait_for(
            url,
            name,
            lambda ts: any(t.state == TrialState.COMPLETE for t in ts) and running_with_progress(ts, worker),
            [proc, *others],
        )
        proc.send_signal(signal.SIGSTOP)
        running = running_with_progress(trials_of(url, name), worker)
        if running:
            return running
        proc.send_signal(signal.SIGCONT)


def test_three_workers_share_a_nine_trial_study(write_spec, postgres_url, mnist_dir) -> None:
    spec = write_spec(epochs=3)
    procs = [start_worker(spec, postgres_url, 9, mnist_dir) for _ in range(3)]
    results = [finish(p) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert "recommended trial of study 'small'" in out
    trials = trials_of(postgres_url, "small")
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 9, "the workers share one budget: exactly the target"
    assert len(trials) == len(finished), [t.state for t in trials]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value is not None and sorted(t.intermediate_values) == [1, 2, 3]
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= 2, f"the study was not shared: {workers}"
    assert workers <= {f"{socket.gethostname()}:{p.pid}" for p in procs}


def test_sigkilled_worker_trial_is_failed_retried_and_target_reached(write_spec, postgres_url, mnist_dir) -> None:
    spec = write_spec(epochs=20, pruner="none")
    # The stale trial is failed when the survivor starts a trial more than the 3 s grace period
    # after the kill, so the target must outlast that. A trial here takes about 0.25 s on idle
    # cores (12 in 3 s); with 16 the survivor once reached the target first, and the retry was
    # left waiting.
    victim, survivor = (start_worker(spec, postgres_url, 48, mnist_dir, "--heartbeat-interval", 1) for _ in range(2))
    running = frozen_in_training(postgres_url, "small", victim, [survivor])
    before = trials_of(postgres_url, "small")
    victim.kill()
    victim.wait()
    (killed,) = running
    code, _, err = finish(survivor)
    assert code == 0, err

    trials = {t.number: t for t in trials_of(postgres_url, "small")}
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, "failed by exactly one surviving worker, retried once"
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["seed_trial"] == killed.number, "a retry trains with the killed trial's seeds"
    assert sum(t.state in FINISHED for t in trials.values()) >= 48
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    for t in before:
        if t.state == TrialState.COMPLETE:
            kept = trials[t.number]
            assert (kept.state, kept.value, kept.params, kept.intermediate_values) == (
                t.state,
                t.value,
                t.params,
                t.intermediate_values,
            )


def test_sigterm_fails_the_trial_in_hand_queues_its_retry_and_exits_with_one_line(
    write_spec, postgres_url, mnist_dir
) -> None:
    spec = write_spec(epochs=60, pruner="none")  # about a second and a half a trial
    proc = start_worker(spec, postgres_url, 50, mnist_dir)
    (held,) = frozen_in_training(postgres_url, "small", proc, [])
    proc.send_signal(signal.SIGTERM)  # pending until the worker runs again, with the trial still in hand
    proc.send_signal(signal.SIGCONT)
    code, _, err = finish(proc, timeout=30)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM: study 'small' keeps its") and "queued for retry" in last, err

    trials = trials_of(postgres_url, "small")
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    assert failed.number == held.number
    assert f"#{failed.number} was marked FAIL and queued for retry as #{queued.number}" in last
    assert queued.params == failed.params and queued.system_attrs["failed_trial"] == failed.number
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = sum(t.state in FINISHED for t in trials)

    # The next worker runs the queued retry first.
    code, _, err = finish(start_worker(spec, postgres_url, done + 1, mnist_dir))
    assert code == 0, err
    retried = next(t for t in trials_of(postgres_url, "small") if t.number == queued.number)
    assert retried.state == TrialState.COMPLETE and retried.params == failed.params


CREATE_AT = """
import sys, time
from hpo.spec.study_spec import load_spec
from hpo.store.connect import open_storage
from hpo.search.study import load_or_create
spec, url, start = load_spec(sys.argv[1]), sys.argv[2], float(sys.argv[3])
while time.time() < start:
    pass
print(load_or_create(spec, open_storage(url)).study_name)
"""


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_workers_starting_at_the_same_instant_create_one_study_and_queue_the_warm_start_once(
    backend, write_spec, request, tmp_path
) -> None:
    spec = write_spec(
        write_spec().read_text().replace('pruner = "median"', 'pruner = "median"\nenqueue_published = true')
    )
    new_db = request.getfixturevalue("new_postgres_db") if backend == "postgresql" else None
    for round_ in range(3):  # without handling, two of three processes fail most rounds (duplicate tables)
        url = new_db() if new_db else f"sqlite:///{tmp_path}/{round_}.db"
        start = time.time() + 6  # after every interpreter has imported optuna and torch
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CREATE_AT, str(spec), url, str(start)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for proc in procs:
            code, out, err = finish(proc, timeout=120)
            assert code == 0 and out.strip() == "small", err
        assert optuna.get_all_study_names(url) == ["small"]
        queued = [t.user_attrs["published"] for t in trials_of(url, "small")]
        assert sorted(queued) == sorted(p.source for p in PUBLISHED), "the published configurations, once each"


def test_an_init_write_sqlite_refuses_for_a_read_made_stale_by_another_worker_is_retried(tmp_path) -> None:
    # Two workers initialising one SQLite file (WAL): one reads, the other commits, the first
    # writes. SQLite answers "database is locked" at once, busy timeout or not; the retry reads afresh.
    path = tmp_path / "w.db"
    open_storage(f"sqlite:///{path}")  # WAL mode and Optuna's schema, as a worker leaves them
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE marks (x)")
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})
    attempts: list[float] = []

    def create() -> int:
        attempts.append(time.monotonic())
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("SELECT count(*) FROM marks").all()
            if len(attempts) == 1:
                other.execute("INSERT INTO marks VALUES (1)")  # the other worker, between our read and write
            conn.exec_driver_sql("INSERT INTO marks VALUES (2)")
            conn.exec_driver_sql("COMMIT")
        return len(attempts)

    assert retry_init_race(create) == 2
    assert sorted(x for (x,) in other.execute("SELECT x FROM marks")) == [1, 2]
    other.close()
    engine.dispose()


class StartingServer(socketserver.ThreadingTCPServer):
    """A database port that drops connections (a server still starting) until `up` is set,
    then forwards them to the real server. Counts the connections it dropped."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target, self.up, self.dropped = target, False, 0


class _Forward(socketserver.BaseRequestHandler):
    server: StartingServer

    def handle(self) -> None:
        if not self.server.up:
            self.server.dropped += 1
            return  # closing at once: the client sees "server closed the connection"
        upstream = socket.create_connection(self.server.target)
        back = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
        back.start()
        _pump(self.request, upstream)
        back.join()
        upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def starting_server(postgres_url: str) -> Iterator[tuple[str, StartingServer]]:
    """(a URL through the starting server, the server)."""
    real = sqlalchemy.make_url(postgres_url)
    server = StartingServer((real.host or "127.0.0.1", real.port or 5432))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield real.set(host="127.0.0.1", port=server.server_address[1]).render_as_string(hide_password=False), server
    server.shutdown()
    server.server_close()


def test_worker_retries_a_database_that_is_still_starting_then_runs(write_spec, starting_server, mnist_dir) -> None:
    url, server = starting_server
    proc = start_worker(write_spec(epochs=1), url, 1, mnist_dir, "--connect-timeout", 300)
    deadline = time.monotonic() + 180
    while server.dropped < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.dropped >= 3 and proc.poll() is None, (server.dropped, proc.poll())
    server.up = True
    code, _, err = finish(proc)
    assert code == 0, err
    assert len(trials_of(url, "small")) == 1


def test_unreachable_server_gives_up_after_connect_timeout_with_one_line(cli, write_spec, mnist_dir) -> None:
    url = f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/hpo"
    line = one_error_line(
        cli("optimize", "--spec", write_spec(), "--data-dir", mnist_dir, "--storage", url, "--connect-timeout", 2)
    )
    assert line.startswith("error: cannot reach database server 127.0.0.1:") and "--connect-timeout" in line
    assert "secret" not in line


def test_unknown_role_is_reported_at_once_as_credentials(cli, write_spec, postgres_url, mnist_dir) -> None:
    url = (
        sqlalchemy.make_url(postgres_url)
        .set(username="no_such_user", password="pw")
        .render_as_string(hide_password=False)
    )
    # A long --connect-timeout: waiting on a refusal would hang this test, not pass it.
    line = one_error_line(
        cli("optimize", "--spec", write_spec(), "--data-dir", mnist_dir, "--storage", url, "--connect-timeout", 3600)
    )
    assert "refused user 'no_such_user'" in line and "check the user and password" in line, line
    assert "pw@" not in line


def test_unknown_database_is_reported_at_once(cli, write_spec, postgres_server, mnist_dir) -> None:
    url = postgres_server.set(database="hpo_no_such_db").render_as_string(hide_password=False)
    line = one_error_line(
        cli("optimize", "--spec", write_spec(), "--data-dir", mnist_dir, "--storage", url, "--connect-timeout", 3600)
    )
    assert "database 'hpo_no_such_db' does not exist" in line, line


def test_two_processes_and_a_slow_reader_share_one_sqlite_file_without_lock_errors(
    write_spec, tmp_path, mnist_dir
) -> None:
    spec = write_spec(
        """
        [study]
        name = "laptop"
        sampler = "random"
        pruner = "none"
        [train]
        folds = 2
        epochs = 2
        train_pairs = 100
        [space]
        lr = { low = 1e-3, high = 1e-2, log = true }
        conv1_channels = 4
        conv2_channels = 8
        hidden = 16
        """
    )
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    procs = [start_worker(spec, url, 30, mnist_dir, "--heartbeat-interval", 1) for _ in range(2)]
    wait_for(url, "laptop", lambda ts: len(ts) >= 2, procs)
    finished = "SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
    # A reader that keeps a transaction open for longer than sqlite3's default 5 s busy
    # timeout, as a dashboard or report on a large study does, while both workers write.
    with sqlite3.connect(db, isolation_level=None) as reader:
        reader.execute("BEGIN")
        before = reader.execute(finished).fetchone()[0]
        time.sleep(8)
        with sqlite3.connect(db) as fresh:
            during = fresh.execute(finished).fetchone()[0]
        reader.execute("COMMIT")
    assert during > before, "the open read transaction stalled the workers' commits"
    for code, _, err in map(finish, procs):
        assert code == 0, err
        assert "locked" not in err
    trials = trials_of(url, "laptop")
    assert sum(t.state in FINISHED for t in trials) == 30
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def _lost_trial_study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = open_storage(f"sqlite:///{tmp_path / 'lost.db'}", heartbeat_interval=1)
    return optuna.create_study(storage=storage, study_name="lost", direction="maximize"), storage


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # the bare asks
def test_a_trial_asked_for_by_a_worker_that_died_before_its_first_heartbeat_is_failed(tmp_path) -> None:
    study, _ = _lost_trial_study(tmp_path)
    orphan = study.ask()  # then the worker died (or lost the store): no heartbeat, no "worker"
    claimed = study.ask()
    claimed.set_user_attr("worker", "elsewhere:1")  # one that a live worker holds
    fail_stale_trials(study)  # first seen unclaimed now, by this worker's own clock
    assert {t.state for t in study.get_trials()} == {TrialState.RUNNING}
    time.sleep(3.5)  # the grace period: 3 heartbeat intervals of 1 s
    fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[orphan.number] == TrialState.FAIL
    assert study.get_trials()[orphan.number].system_attrs["unclaimed"] is True
    assert states[claimed.number] == TrialState.RUNNING, "a claimed trial is left to the heartbeat check"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("then", ["returns", "reports"])
def test_worker_drops_a_trial_another_worker_failed_as_stale_and_goes_on(tmp_path, then) -> None:
    study, storage = _lost_trial_study(tmp_path)
    ran: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial.number)
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:  # a second worker found this trial's heartbeat late, as fail_stale_trials does
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            RetryHeartbeatStaleTrialCallback(max_retry=2)(study, storage.get_trial(trial._trial_id))
            if then == "reports":
                trial.report(x, 1)
        return x

    run_until(study, objective, target=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, *[TrialState.COMPLETE] * 3]
    assert trials[1].params == trials[0].params  # the retry the other worker queued ran
    assert ran == [0, 1, 2, 3]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_worker_drops_a_trial_failed_as_stale_between_tells_read_and_its_write(tmp_path, monkeypatch) -> None:
    """The race chaos.py found: a worker resumed from SIGSTOP tells a trial that another
    worker fails after `tell` has read it as running; the write then refuses."""
    study, storage = _lost_trial_study(tmp_path)
    write = storage.set_trial_state_values
    raced: list[int] = []

    def racing(trial_id: int, state: TrialState, values=None) -> bool:
        if state == TrialState.COMPLETE and not raced:  # the other worker's write lands first
            raced.append(trial_id)
            write(trial_id, state=TrialState.FAIL)
            RetryHeartbeatStaleTrialCallback(max_retry=2)(study, storage.get_trial(trial_id))
        return write(trial_id, state, values)

    monkeypatch.setattr(storage, "set_trial_state_values", racing)
    run_until(study, lambda trial: trial.suggest_float("x", 0.0, 1.0), target=3)
    trials = study.get_trials()
    assert raced == [trials[0]._trial_id]
    assert [t.state for t in trials] == [TrialState.FAIL, *[TrialState.COMPLETE] * 3]
    assert trials[1].params == trials[0].params  # the retry the other worker queued ran


def test_an_objective_error_is_not_mistaken_for_a_lost_trial(tmp_path) -> None:
    study, _ = _lost_trial_study(tmp_path)

    def objective(trial: optuna.Trial) -> float:
        raise ValueError("bug in the objective")

    with pytest.raises(ValueError, match="bug in the objective"):
        run_until(study, objective, target=3)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]


@pytest.mark.parametrize("finaliser", ["weakref callback", "weakref.finalize", "__del__"])
def test_a_stop_signal_that_lands_in_a_finaliser_is_raised_again_in_training(finaliser, recwarn) -> None:
    """Python prints and drops an exception raised in a finaliser: the stop must not be lost there."""

    def signalled() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns, inside the finaliser
        sum(range(1000))

    class Key:
        def __del__(self) -> None:
            if finaliser == "__del__":
                signalled()

    guard, key = SignalGuard(), Key()
    keep = weakref.ref(key, lambda _: signalled()) if finaliser == "weakref callback" else None
    if finaliser == "weakref.finalize":
        weakref.finalize(key, signalled)
    with guard.installed(), guard.objective_running(), pytest.raises(Interrupted) as stopped:
        del key  # the finaliser runs now, in the main thread, as numba's type caches' callbacks do
        for _ in range(200):  # training goes on; the signal arrives again within 10 ms
            time.sleep(0.01)
    assert stopped.value.signum == signal.SIGTERM and guard.signum == signal.SIGTERM
    assert keep is None or keep() is None
    assert not [w for w in recwarn if issubclass(w.category, pytest.PytestUnraisableExceptionWarning)]


def test_a_stop_signal_waits_until_a_database_drivers_call_returns() -> None:
    """Raised inside a driver's call, a stop leaves its connection mid-protocol; it waits for the call instead."""
    finished: list[str] = []
    driver = {"__name__": "psycopg.cursor", "os": os, "signal": signal, "time": time, "finished": finished}
    exec(  # a function whose frame belongs to the driver's module, as a real cursor.execute's does
        "def execute():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the driver\n"
        "    end = time.monotonic() + 0.1\n"
        "    while time.monotonic() < end:\n"
        "        pass\n"
        "    finished.append('execute')\n",
        driver,
    )
    guard = SignalGuard()
    with guard.installed(), guard.objective_running(), pytest.raises(Interrupted) as stopped:
        driver["execute"]()
        for _ in range(200):  # back in our code: the signal, sent again, raises here within 10 ms
            time.sleep(0.01)
    assert finished == ["execute"], "the driver's call ran to its end"
    assert stopped.value.signum == signal.SIGTERM and guard.signum == signal.SIGTERM


def test_a_stop_signal_waits_until_numba_has_compiled_a_kernel(recwarn) -> None:
    """Raised inside numba's compiler, a stop left llvmlite objects half-built whose finalisers printed tracebacks."""
    import numba
    from numba.core import event

    class SignalOnCompile(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside numba's compiler

        def on_end(self, ev: event.Event) -> None:
            pass

    @numba.njit(cache=False)
    def kernel(x: float) -> float:  # a fresh function: calling it compiles it
        return x * 2.0 + 1.0

    guard, results = SignalGuard(), []
    with guard.installed(), guard.objective_running(), pytest.raises(Interrupted) as stopped:
        with event.install_listener("numba:compile", SignalOnCompile()):
            results.append(kernel(1.5))
        for _ in range(200):  # back in our code: the signal, sent again, raises here within 10 ms
            time.sleep(0.01)
    assert results == [4.0], "the compile ran to its end and the kernel ran"
    assert stopped.value.signum == signal.SIGTERM
    assert not [w for w in recwarn if issubclass(w.category, pytest.PytestUnraisableExceptionWarning)]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_stop_that_a_library_error_wraps_still_fails_the_trial_for_its_retry(tmp_path) -> None:
    study, _ = _lost_trial_study(tmp_path)

    def objective(trial: optuna.Trial) -> float:
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted as stop:  # as SQLAlchemy does when the stop lands in its pool's ping
            raise RuntimeError("can't change 'autocommit' now") from stop

    with pytest.raises(Interrupted) as stopped:
        run_until(study, objective, target=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], "failed, and its retry queued"
    assert stopped.value.trial_number == 0 and stopped.value.retry == 1
    assert trials[1].system_attrs["retry_history"] == [0]
