"""`hpo optimize` and `hpo studies` end to end: real data, real SQLite, real Optuna."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo.search.loop import run_until
from hpo.search.objective import Objective
from hpo.search.study import load_or_create
from hpo.spec.study_spec import load_spec
from hpo.store.connect import open_storage
from hpo.training.data import cv_pairs

SEVEN = {"weight_sharing", "aux_weight", "dropout", "batch_norm", "lr", "beta1", "weight_decay"}


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_three_trial_study_stores_params_intermediates_and_attributes(cli, write_spec, sqlite_url, mnist_dir) -> None:
    result = cli(
        "optimize", "--trials", 3, "--spec", write_spec(epochs=2), "--storage", sqlite_url, "--data-dir", mnist_dir
    )
    assert result.exit_code == 0, result.stderr
    assert "recommended trial of study 'small'" in result.stdout and "CV accuracy" in result.stdout
    trials = trials_of(sqlite_url, "small")
    assert len(trials) == 3
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.params) >= SEVEN
        assert sorted(t.intermediate_values) == [1, 2]
        assert len(t.user_attrs["fold_accuracies"]) == 2
        assert t.value == pytest.approx(sum(t.user_attrs["fold_accuracies"]) / 2)
        assert t.user_attrs["n_params"] > 0 and t.user_attrs["train_seconds"] > 0
        assert t.user_attrs["precision"] == "float32"  # the default, whatever the CPU


def test_trials_target_counts_the_whole_study_so_reruns_continue(cli, write_spec, sqlite_url, mnist_dir) -> None:
    args = ["--spec", write_spec(epochs=1), "--storage", sqlite_url, "--data-dir", mnist_dir, "--study", "cont"]
    assert cli("optimize", "--trials", 2, *args).exit_code == 0
    assert cli("optimize", "--trials", 3, *args).exit_code == 0
    assert len(trials_of(sqlite_url, "cont")) == 3
    assert cli("optimize", "--trials", 3, *args).exit_code == 0
    assert len(trials_of(sqlite_url, "cont")) == 3, "a study that holds its target runs nothing more"


def test_median_pruner_prunes_clearly_bad_trials(cli, write_spec, sqlite_url, mnist_dir) -> None:
    spec = write_spec(
        """
        [study]
        name = "prune"
        sampler = "random"
        pruner = "median"
        seed = 3
        [train]
        folds = 2
        epochs = 4
        train_pairs = 200
        [space]
        lr = { choices = [0.003, 1e-7] }
        aux_weight = 1.0
        conv1_channels = 8
        conv2_channels = 16
        hidden = 32
        """
    )
    result = cli("optimize", "--trials", 12, "--spec", spec, "--storage", sqlite_url, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    trials = trials_of(sqlite_url, "prune")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.state) for t in trials]
    assert all(t.params["lr"] == 1e-7 for t in pruned), "only the hopeless learning rate is pruned"
    assert all(len(t.intermediate_values) < 4 for t in pruned)


def test_quartile_pruner_stops_a_trial_the_median_pruner_lets_finish(write_spec, sqlite_url) -> None:
    """Eight finished trials scored 0.1 to 0.8 at every epoch; a new one at 0.55 is above their
    median (0.45) and below their top quarter (about 0.63): median lets it go on, quartile stops it."""
    for pruner in ("median", "quartile"):
        spec = replace(load_spec(write_spec(epochs=5)), name=pruner, pruner=pruner)
        study = load_or_create(spec, open_storage(sqlite_url))
        for score in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
            trial = study.ask()
            for epoch in range(1, 6):
                trial.report(score, epoch)
            study.tell(trial, score)
        trial = study.ask()
        verdicts = []
        for epoch in range(1, 6):
            trial.report(0.55, epoch)
            verdicts.append(trial.should_prune())
        assert verdicts[:2] == [False, False], "nothing is pruned before the third epoch"
        assert verdicts[2:] == ([False] * 3 if pruner == "median" else [True] * 3), pruner


def test_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(write_spec, sqlite_url, mnist_dir) -> None:
    spec = load_spec(write_spec(epochs=2))
    pairs = cv_pairs(mnist_dir, spec.train.train_pairs, spec.seed, download=False)
    pairs.inputs[5] = float("nan")
    study = load_or_create(spec, open_storage(sqlite_url))
    run_until(study, Objective(spec, pairs, "cpu"), target=2)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all("NaN or infinite" in t.user_attrs["pruned_reason"] for t in trials)


def test_grid_sampler_runs_an_all_choice_space(cli, write_spec, sqlite_url, mnist_dir) -> None:
    spec = write_spec(
        """
        [study]
        name = "grid"
        sampler = "grid"
        pruner = "none"
        [train]
        folds = 2
        epochs = 1
        train_pairs = 100
        [space]
        weight_sharing = { choices = [true, false] }
        batch_norm = { choices = [true, false] }
        conv1_channels = 4
        conv2_channels = 8
        hidden = 16
        """
    )
    result = cli("optimize", "--trials", 10, "--spec", spec, "--storage", sqlite_url, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    cells = {(t.params["weight_sharing"], t.params["batch_norm"]) for t in trials_of(sqlite_url, "grid")}
    assert len(cells) == 4


def test_studies_lists_counts_and_best_values(cli, write_spec, sqlite_url, mnist_dir) -> None:
    cli("optimize", "--trials", 2, "--spec", write_spec(epochs=1), "--storage", sqlite_url, "--data-dir", mnist_dir)
    result = cli("studies", "--storage", sqlite_url)
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if "small" in line)
    best = max(t.value for t in trials_of(sqlite_url, "small"))
    assert f"{best:.4f}" in row and " 2 " in row


def test_storage_and_data_dir_come_from_the_environment(cli, write_spec, sqlite_url, mnist_dir) -> None:
    env = {"HPO_STORAGE": sqlite_url, "HPO_DATA_DIR": str(mnist_dir)}
    assert cli("optimize", "--trials", 1, "--spec", write_spec(epochs=1), env=env).exit_code == 0
    assert len(trials_of(sqlite_url, "small")) == 1


@pytest.mark.parametrize("command", [[], ["optimize"], ["studies"]])
def test_every_command_has_help(cli, command) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_ctrl_c_keeps_finished_trials_and_fails_the_running_one(write_spec, tmp_path, mnist_dir) -> None:
    db = tmp_path / "int.db"
    url = f"sqlite:///{db}"
    # Trials long enough that the one seen in training is still training when SIGINT lands:
    # with 30 epochs a fast CPU finished it in the half second between the look and the signal,
    # and the stop found no trial in hand (CI failed so once).
    epochs = 300
    spec = write_spec(epochs=epochs)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "optimize",
            "--trials",
            "1000",
            "--spec",
            str(spec),
            "--storage",
            url,
            "--data-dir",
            str(mnist_dir),
            "--pruner",
            "none",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    engine = sqlalchemy.create_engine(url)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if db.exists():
            with engine.connect() as conn:
                try:
                    done = conn.execute(
                        sqlalchemy.text("select count(*) from trials where state = 'COMPLETE'")
                    ).scalar()
                    # a trial in training (n_params is stored once every parameter is sampled), not one being asked for
                    training = conn.execute(
                        sqlalchemy.text(
                            "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
                            "where t.state = 'RUNNING' and a.key = 'n_params'"
                        )
                    ).scalar()
                except sqlalchemy.exc.OperationalError:
                    continue
            if done >= 1 and training:
                break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    trials = trials_of(url, "small")
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 1
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == failed.params, "the interrupted trial is queued to run again"
    assert all(t.state != TrialState.RUNNING for t in trials)
    # No pruner reads per-epoch scores here, so the folds are scored once, after the last epoch.
    assert all(sorted(t.intermediate_values) == [epochs] for t in trials if t.state == TrialState.COMPLETE)
