"""Confirmation: the leading trials re-scored on a second draw of pairs, and the trial recommended by both."""

from __future__ import annotations

import threading
import time

import optuna
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.confirm import claim, confirm_leaders, confirm_seed, record
from hpo.data import cv_pairs
from hpo.results import LEGACY_CONFIRMED as LEGACY
from hpo.results import confirmed_best, pick_trial, scores
from hpo.spec import load_spec, parse_spec


def _study(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        study.add_trial(create_trial(value=value, params={"lr": 1e-3 * (i + 1)}, distributions={"lr": FloatDistribution(1e-4, 1e-2)}))
    return study


def test_recommended_trial_is_the_best_mean_of_both_draws() -> None:
    study = _study([0.95, 0.94, 0.90])
    assert pick_trial(study, None).number == 0, "without confirmation: the best CV score"
    record(study, 0, 0.90)
    record(study, 1, 0.945)
    assert confirmed_best(study).number == 1
    assert pick_trial(study, None).number == 1
    assert pick_trial(study, 0).number == 0, "an explicit --trial still wins"


def test_second_draw_uses_other_training_pairs(mnist_dir) -> None:
    spec = load_spec("twin")
    first = cv_pairs(mnist_dir, 200, spec.seed, download=False)
    second = cv_pairs(mnist_dir, 200, confirm_seed(spec), download=False)
    assert confirm_seed(spec) != spec.seed
    assert not torch.equal(first.inputs, second.inputs)


def test_optimize_confirms_the_leaders_once_and_recommends_by_both_scores(cli, write_spec, sqlite_url, mnist_dir) -> None:
    args = ["--spec", write_spec(epochs=1, pruner="none"), "--storage", sqlite_url, "--data-dir", mnist_dir, "--confirm", 2]
    result = cli("optimize", "--trials", 4, *args)
    assert result.exit_code == 0, result.stderr
    study = optuna.load_study(study_name="small", storage=sqlite_url)
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=True)
    second = scores(study)
    assert set(second) == {t.number for t in complete[:2]}
    assert all(0.0 <= v <= 1.0 for v in second.values())
    assert result.stderr.count("confirmed trial #") == 2
    best = confirmed_best(study)
    assert f"recommended trial of study 'small': #{best.number}" in result.stdout
    assert best.number in {t.number for t in complete[:2]}
    again = cli("optimize", "--trials", 4, *args)
    assert again.exit_code == 0 and "confirmed trial #" not in again.stderr, "scores are kept, not recomputed"


def test_confirm_zero_turns_confirmation_off(cli, write_spec, sqlite_url, mnist_dir) -> None:
    args = ["--spec", write_spec(epochs=1), "--storage", sqlite_url, "--data-dir", mnist_dir, "--confirm", 0]
    assert cli("optimize", "--trials", 2, *args).exit_code == 0
    assert scores(optuna.load_study(study_name="small", storage=sqlite_url)) == {}


def test_negative_confirm_is_one_error_line(cli, write_spec, sqlite_url, mnist_dir) -> None:
    result = cli("optimize", "--spec", write_spec(), "--storage", sqlite_url, "--data-dir", mnist_dir, "--confirm", -1)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --confirm must be 0 or more; got -1"


TINY = {"study": {"name": "c"}, "train": {"folds": 2, "epochs": 1, "train_pairs": 100},
        "space": {"lr": {"low": 1e-3, "high": 1e-2}, "conv1_channels": 4, "conv2_channels": 8, "hidden": 16}}


def test_a_second_worker_skips_leaders_already_scored_and_starts_elsewhere(tmp_path, mnist_dir) -> None:
    spec = parse_spec(TINY)
    study = _study([0.95, 0.94, 0.90])
    record(study, 1, 0.5)  # scored by another worker
    seen: list[int] = []
    scores = confirm_leaders(study, spec, mnist_dir, 3, torch.device("cpu"), lambda t, v: seen.append(t.number), start_at=1)
    assert seen == [2, 0], "starts at the second unscored leader, wraps around, skips #1"
    assert scores[1] == 0.5 and set(scores) == {0, 1, 2}


def test_a_leader_another_worker_is_scoring_is_waited_for_not_scored_twice(mnist_dir) -> None:
    study = _study([0.95, 0.94, 0.90])
    claim(study, 1, time.time())  # the other worker has just begun #1
    other = threading.Timer(1.5, record, (study, 1, 0.5))  # ... and stores its score later
    other.start()
    seen: list[int] = []
    try:
        got = confirm_leaders(study, parse_spec(TINY), mnist_dir, 3, torch.device("cpu"), lambda t, v: seen.append(t.number), start_at=0)
    finally:
        other.join()
    assert sorted(seen) == [0, 2], "this worker scores only the unclaimed leaders"
    assert got[1] == 0.5 and set(got) == {0, 1, 2}, "and returns once the other worker's score is in"


def test_a_lapsed_claim_of_a_worker_that_died_is_taken_over(mnist_dir) -> None:
    study = _study([0.95, 0.94])
    claim(study, 0, time.time() - 3600)
    seen: list[int] = []
    got = confirm_leaders(study, parse_spec(TINY), mnist_dir, 2, torch.device("cpu"), lambda t, v: seen.append(t.number), start_at=0)
    assert seen == [0, 1] and set(got) == {0, 1}


def test_each_score_has_its_own_key_so_concurrent_workers_cannot_overwrite_each_other() -> None:
    study = _study([0.95, 0.94, 0.90])
    study.set_user_attr(LEGACY, {"2": 0.7})  # a study scored by the previous release
    record(study, 0, 0.9)
    record(study, 1, 0.8)
    assert {k for k in study.user_attrs if k != LEGACY} == {"confirmed:0", "confirmed:1"}
    assert scores(study) == {0: 0.9, 1: 0.8, 2: 0.7}
