"""Unattended workers (compose, Kubernetes, CI, `> file`) log a line per finished trial and summaries."""

from __future__ import annotations

import json
import re
import socket

import pytest
from optuna.trial import TrialState
from test_workers import FINISHED, finish, start_worker, trials_of

SECRET = "Sup3rSecretPw"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_worker_without_a_terminal_logs_each_finished_trial_and_summaries(
    write_spec, sqlite_url, mnist_dir, jobs
) -> None:
    spec = write_spec(epochs=1, pruner="none")
    code, out, err = finish(start_worker(spec, sqlite_url, 4, mnist_dir, "--jobs", jobs, log_format=None))
    assert code == 0, err
    assert "━" not in err, "no progress bar without a terminal"
    trials = [t for t in trials_of(sqlite_url, "small") if t.state in FINISHED]
    logged = re.findall(r"^\S+ trial (\d+) (COMPLETE|PRUNED) value (\S+) seconds (\S+) worker (\S+)$", err, re.M)
    assert sorted(int(n) for n, *_ in logged) == sorted(t.number for t in trials), err
    by_number = {t.number: t for t in trials}
    for number, state, value, seconds, worker in logged:
        trial = by_number[int(number)]
        assert state == trial.state.name and worker == trial.user_attrs["worker"]
        assert worker.startswith(socket.gethostname() + ":") and float(seconds) > 0
        if trial.state == TrialState.COMPLETE:
            assert float(value) == pytest.approx(trial.value, abs=1e-4)
    summaries = re.findall(r"^\S+ study small: (\d+)/4 finished", err, re.M)
    assert summaries[0] == "0" and summaries[-1] == "4", err
    assert "recommended trial of study 'small'" in out


def test_json_log_lines_for_log_collectors(write_spec, postgres_url, mnist_dir) -> None:
    url = postgres_url.replace("postgres@", f"postgres:{SECRET}@")
    spec = write_spec(epochs=1, pruner="none")
    code, out, err = finish(start_worker(spec, url, 3, mnist_dir, "--jobs", 2, "--log-format", "json"))
    assert code == 0, err
    assert SECRET not in out + err
    events = [json.loads(line) for line in err.splitlines() if line.strip()]
    finished = {t.number: t for t in trials_of(postgres_url, "small") if t.state in FINISHED}
    logged = [e for e in events if e["event"] == "trial"]
    assert sorted(e["trial"] for e in logged) == sorted(finished)
    for e in logged:
        assert (
            e["state"] == finished[e["trial"]].state.name and e["worker"] == finished[e["trial"]].user_attrs["worker"]
        )
        assert e["seconds"] > 0 and re.match(r"\d{4}-\d\d-\d\dT", e["time"])
    summaries = [e for e in events if e["event"] == "summary"]
    assert summaries[0]["finished"] == 0 and summaries[-1]["finished"] == 3 and summaries[-1]["running"] == 0


def test_an_unknown_log_format_is_one_line(cli) -> None:
    result = cli("optimize", "--log-format", "xml")
    assert result.exit_code == 2 and "--log-format must be one of auto, bar, text, json" in result.stderr


@pytest.mark.parametrize(("took", "shown"), [(0.042, "0.042"), (11.34, "11.3")])
def test_a_trial_under_a_second_logs_its_milliseconds_not_zero(took, shown) -> None:
    from datetime import datetime, timedelta
    from io import StringIO

    import optuna

    from hpo.log_lines import TrialLog

    start = datetime(2026, 12, 2, 10, 0, 0)
    trial = optuna.trial.create_trial(value=0.5, state=TrialState.COMPLETE)
    trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=took)
    stream = StringIO()
    TrialLog(stream=stream).trial_finished(optuna.create_study(), trial)
    assert f" seconds {shown} worker -" in stream.getvalue()
