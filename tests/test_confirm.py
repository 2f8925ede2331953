"""Confirmation: the leading trials re-scored on a second draw of pairs, and the trial recommended by both."""

from __future__ import annotations

import optuna
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.confirm import ATTR, confirm_leaders, confirm_seed, confirmed_best
from hpo.data import cv_pairs
from hpo.results import pick_trial
from hpo.spec import load_spec, parse_spec


def _study(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        study.add_trial(create_trial(value=value, params={"lr": 1e-3 * (i + 1)}, distributions={"lr": FloatDistribution(1e-4, 1e-2)}))
    return study


def test_recommended_trial_is_the_best_mean_of_both_draws() -> None:
    study = _study([0.95, 0.94, 0.90])
    assert pick_trial(study, None).number == 0, "without confirmation: the best CV score"
    study.set_user_attr(ATTR, {"0": 0.90, "1": 0.945})
    assert confirmed_best(study).number == 1
    assert pick_trial(study, None).number == 1
    assert pick_trial(study, 0).number == 0, "an explicit --trial still wins"


def test_second_draw_uses_other_training_pairs(mnist_dir) -> None:
    spec = load_spec("studies/twin.toml")
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
    scores = study.user_attrs[ATTR]
    assert set(scores) == {str(t.number) for t in complete[:2]}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert result.stderr.count("confirmed trial #") == 2
    best = confirmed_best(study)
    assert f"recommended trial of study 'small': #{best.number}" in result.stdout
    assert best.number in {t.number for t in complete[:2]}
    again = cli("optimize", "--trials", 4, *args)
    assert again.exit_code == 0 and "confirmed trial #" not in again.stderr, "scores are kept, not recomputed"


def test_confirm_zero_turns_confirmation_off(cli, write_spec, sqlite_url, mnist_dir) -> None:
    args = ["--spec", write_spec(epochs=1), "--storage", sqlite_url, "--data-dir", mnist_dir, "--confirm", 0]
    assert cli("optimize", "--trials", 2, *args).exit_code == 0
    assert ATTR not in optuna.load_study(study_name="small", storage=sqlite_url).user_attrs


def test_negative_confirm_is_one_error_line(cli, write_spec, sqlite_url, mnist_dir) -> None:
    result = cli("optimize", "--spec", write_spec(), "--storage", sqlite_url, "--data-dir", mnist_dir, "--confirm", -1)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --confirm must be 0 or more; got -1"


def test_a_second_worker_skips_leaders_already_scored_and_starts_elsewhere(tmp_path, mnist_dir) -> None:
    spec = parse_spec({"study": {"name": "c"}, "train": {"folds": 2, "epochs": 1, "train_pairs": 100},
                       "space": {"lr": {"low": 1e-3, "high": 1e-2}, "conv1_channels": 4, "conv2_channels": 8, "hidden": 16}})
    study = _study([0.95, 0.94, 0.90])
    study.set_user_attr(ATTR, {"1": 0.5})  # scored by another worker
    seen: list[int] = []
    scores = confirm_leaders(study, spec, mnist_dir, 3, torch.device("cpu"), lambda t, v: seen.append(t.number), start_at=1)
    assert seen == [2, 0], "starts at the second unscored leader, wraps around, skips #1"
    assert scores[1] == 0.5 and set(scores) == {0, 1, 2}
