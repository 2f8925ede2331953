"""`hpo optimize --jobs N`: one command, N real worker processes on one study."""

from __future__ import annotations

import os
import re
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState
from test_bad_input import one_error_line
from test_workers import (
    FINISHED,
    finish,
    message_lines,
    running_with_progress,
    start_worker,
    trials_of,
    wait_for,
)

from hpo.readers.results import DEFAULT_RULE, RULE_NAMES, pick_trial


def _jobs(spec, url, trials, mnist_dir, *extra):
    return start_worker(spec, url, trials, mnist_dir, "--jobs", 2, *extra)


def test_two_jobs_share_one_study_with_one_progress_bar_and_one_recommendation(
    write_spec, sqlite_url, mnist_dir
) -> None:
    spec = write_spec(epochs=15, pruner="none")  # trials long enough for both workers to take some
    code, out, err = finish(_jobs(spec, sqlite_url, 8, mnist_dir))
    assert code == 0, err
    trials = trials_of(sqlite_url, "small")
    assert sum(t.state in FINISHED for t in trials) == 8 and len(trials) == sum(t.state in FINISHED for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "two worker processes trained the trials"
    assert err.count("study small") >= 1 and "worker 1" not in err, "one progress bar, no per-worker noise"
    best = pick_trial(optuna.load_study(study_name="small", storage=sqlite_url), None)
    assert out.count("recommended trial of study 'small'") == 1, out
    assert f"recommended trial of study 'small': #{best.number} ({RULE_NAMES[DEFAULT_RULE]})" in out, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_every_worker_with_one_summary_line(signum, write_spec, sqlite_url, mnist_dir) -> None:
    spec = write_spec(epochs=300, pruner="none")  # seconds a trial: both still in hand when the signal lands
    proc = _jobs(spec, sqlite_url, 100, mnist_dir)
    wait_for(sqlite_url, "small", lambda ts: len(running_with_progress(ts)) == 2, [proc])
    proc.send_signal(signum)
    code, _, err = finish(proc, timeout=60)
    assert code == 128 + signum, err
    assert "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1 and lines[0].startswith(
        f"interrupted by {signal.Signals(signum).name}: study 'small' keeps its"
    ), err
    trials = trials_of(sqlite_url, "small")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    # Each worker's trial in hand (a worker between two trials holds none) failed and queued for retry.
    assert 1 <= len(failed) == len(waiting) <= 2, [t.state for t in trials]
    assert all(f"#{t.number} queued for retry as #" in lines[0] for t in failed)
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_a_worker_that_crashes_is_reported_in_one_line_and_the_other_finishes(
    write_spec, sqlite_url, mnist_dir
) -> None:
    spec = write_spec(epochs=8, pruner="none")
    proc = _jobs(spec, sqlite_url, 8, mnist_dir, "--heartbeat-interval", 1)
    running = wait_for(sqlite_url, "small", lambda ts: running_with_progress(ts), [proc])
    victim = int(running_with_progress(running)[0].user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 1, err
    assert re.search(rf"worker \d \(pid {victim}\) crashed: killed by SIGKILL; the other workers go on", err), err
    assert re.search(rf"^1 of 2 workers failed: worker \d \(pid {victim}\) crashed: killed by SIGKILL$", err, re.M), err
    assert "recommended trial of study" in out, "the survivor finished the study"
    trials = trials_of(sqlite_url, "small")
    assert sum(t.state in FINISHED for t in trials) >= 8
    assert not [t for t in trials if t.state == TrialState.RUNNING], "the dead worker's trial was failed and retried"


@pytest.mark.parametrize(
    "value,message", [("0", "between 1 and"), ("many", "auto or a number"), ("1000", "between 1 and")]
)
def test_bad_jobs_is_one_line(cli, value, message) -> None:
    assert message in one_error_line(cli("optimize", "--jobs", value))


def test_workers_die_with_their_command_even_when_it_is_sigkilled(write_spec, sqlite_url, mnist_dir) -> None:
    spec = write_spec(epochs=300, pruner="none")  # seconds a trial: both still in hand when the signal lands
    proc = _jobs(spec, sqlite_url, 100, mnist_dir)
    running = wait_for(sqlite_url, "small", lambda ts: len(running_with_progress(ts)) == 2, [proc])
    pids = [int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in running_with_progress(running)]
    proc.kill()  # SIGKILL: the command cannot forward anything
    proc.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "a worker outlived its command"
    trials = trials_of(sqlite_url, "small")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    retried = {t.system_attrs.get("failed_trial") for t in trials if t.state == TrialState.WAITING}
    assert failed == retried and len(failed) == 2, "each worker's trial in hand failed and queued for retry once"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
