"""--patience: a study stops once its best CV score rises within its folds' noise over the last N trials."""

from __future__ import annotations

import datetime

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.search.stopping import plateau

T0 = datetime.datetime(2026, 12, 2, 6, 0, 0)


def trial(number: int, value: float | None, folds: list[float] | None = None, state=TrialState.COMPLETE) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        datetime_start=T0 + datetime.timedelta(seconds=10 * number),
        datetime_complete=T0 + datetime.timedelta(seconds=10 * number + 5),
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs={"fold_accuracies": folds} if folds else {},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


# Folds 0.98 and 1.00: standard error 0.01.
NOISY_BEST = [0.98, 1.0]


def test_a_rise_within_the_best_trials_standard_error_over_the_last_n_trials_stops_the_study() -> None:
    trials = [trial(0, 0.90), trial(1, 0.985), trial(2, 0.99, NOISY_BEST), trial(3, 0.97)]
    reached = plateau(trials, patience=2)
    assert reached is not None
    assert (reached.finished, reached.best, reached.noise) == (4, 0.99, pytest.approx(0.01))
    assert reached.rise == pytest.approx(0.005)
    assert "stopped after 4 finished trials" in reached.line()


def test_a_rise_beyond_the_noise_keeps_the_study_going() -> None:
    trials = [trial(0, 0.90), trial(1, 0.95), trial(2, 0.99, NOISY_BEST), trial(3, 0.97)]
    assert plateau(trials, patience=2) is None  # rose 0.04 over the last two, noise 0.01
    assert plateau(trials, patience=1) is not None  # the last trial alone did not rise


def test_nothing_stops_before_patience_trials_follow_the_first_complete_one() -> None:
    pruned = [trial(n, 0.5, state=TrialState.PRUNED) for n in range(5)]
    assert plateau(pruned, patience=2) is None  # no complete trial yet
    assert plateau([*pruned, trial(5, 0.9), trial(6, 0.8)], patience=2) is None
    assert plateau([*pruned, trial(5, 0.9), trial(6, 0.8), trial(7, 0.85)], patience=2) is not None


def test_trials_count_in_the_order_they_finished_and_failed_ones_not_at_all() -> None:
    late = trial(1, 0.99)
    late.datetime_complete = T0 + datetime.timedelta(seconds=100)  # started second, finished last
    trials = [trial(0, 0.90), late, trial(2, 0.91), trial(3, 0.0, state=TrialState.FAIL)]
    assert plateau(trials, patience=1) is None  # the last to finish rose 0.08 over the others
    assert plateau(trials, patience=0) is None  # 0: off


def test_a_minimised_study_stops_when_its_lowest_score_stops_falling() -> None:
    trials = [trial(0, 0.30), trial(1, 0.10), trial(2, 0.12)]
    assert plateau(trials, patience=1, maximize=False) is not None
    assert plateau(trials, patience=2, maximize=False) is None


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_optimize_with_patience_stops_at_the_plateau_and_says_why(write_spec, sqlite_url, mnist_dir, jobs) -> None:
    from test_workers import FINISHED, finish, start_worker, trials_of

    spec = write_spec(epochs=1, pruner="none")
    code, _, err = finish(start_worker(spec, sqlite_url, 60, mnist_dir, "--patience", 2, "--jobs", jobs))
    assert code == 0, err
    done = sorted((t for t in trials_of(sqlite_url, "small") if t.state in FINISHED), key=lambda t: t.datetime_complete)
    assert len(done) < 60, "two trials in a row within the folds' noise is all it takes; 60 would be a broken rule"
    reached = plateau(done, patience=2)
    assert reached is not None and f"stopped after {len(done)} finished trials" in err, err
    if jobs == "1":  # a lone worker checks before every ask: it stopped at the first plateau
        assert plateau(done[:-1], patience=2) is None


@pytest.mark.parametrize(
    ("spec", "patience", "message"),
    [("pareto", "5", "--patience stops a study by its best CV score"), ("twin", "-1", "--patience must be 0")],
)
def test_patience_refused_with_several_objectives_or_below_zero(sqlite_url, mnist_dir, cli, spec, patience, message):
    result = cli("optimize", "--spec", spec, "--storage", sqlite_url, "--data-dir", mnist_dir, "--patience", patience)
    assert result.exit_code != 0
    assert message in result.output + (result.stderr or "")
