"""benchmarks/budget.py: a finished study read as if it had stopped after its first N trials."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import budget

T0 = datetime.datetime(2026, 12, 2, 6, 0, 0)


def finished(number: int, state: TrialState, value: float | None, ended_s: float) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        datetime_start=T0 + datetime.timedelta(seconds=number),
        datetime_complete=T0 + datetime.timedelta(seconds=ended_s),
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


# Trial 2 started early and finished last, after 3 and 4: two workers interleave like this.
TRIALS = [
    finished(0, TrialState.COMPLETE, 0.90, 10),
    finished(1, TrialState.PRUNED, 0.50, 12),
    finished(2, TrialState.COMPLETE, 0.99, 40),
    finished(3, TrialState.COMPLETE, 0.95, 20),
    finished(4, TrialState.PRUNED, 0.60, 25),
]


def test_a_prefix_is_the_first_trials_to_finish_not_the_lowest_numbers() -> None:
    picks = budget.prefix_picks(TRIALS, [2, 4, 5])
    assert [(p["finished"], p["trial"], p["known_at_s"]) for p in picks] == [(2, 0, 12.0), (4, 3, 25.0), (5, 2, 40.0)]


def test_budgets_beyond_the_study_or_without_a_complete_trial_are_left_out() -> None:
    only_pruned = [finished(0, TrialState.PRUNED, 0.5, 3), finished(1, TrialState.COMPLETE, 0.7, 9)]
    assert [p["finished"] for p in budget.prefix_picks(only_pruned, [1, 2, 3])] == [2]
    assert budget.prefix_picks([], [10]) == []


def test_the_replay_reads_a_real_store_and_prints_a_table(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="twin", direction="maximize")
    for trial in TRIALS:
        study.add_trial(trial)
    picks = budget.main(["--storage", url, "--sizes", "2", "5", "--json", str(tmp_path / "out.json")])
    assert [p["trial"] for p in picks] == [0, 2]
    out = capsys.readouterr().out
    assert "| --trials | 2 | #0 | 0.9000 | 12 |" in out and "| --trials | 5 | #2 | 0.9900 | 40 |" in out
    assert (tmp_path / "out.json").exists()


def test_patience_stops_the_replay_at_the_first_prefix_where_the_rule_holds() -> None:
    # Trial 3 (0.95) is the last rise; trials 4 to 7 finish after it without beating it.
    trials = (
        TRIALS[:2]
        + [finished(3, TrialState.COMPLETE, 0.95, 20)]
        + [finished(n, TrialState.PRUNED, 0.5, 20 + n) for n in (4, 5, 6, 7)]
    )
    picks = budget.patience_picks(trials, [2, 3, 9])
    # patience 2: by 4 finished, 0.95 rose 0.05 over 0.90 within the last two (no fold spread: noise 0),
    # so the rule first holds at 5 finished (no rise over trials 4 and 5); patience 9 never holds.
    assert [(p["patience"], p["finished"], p["trial"]) for p in picks] == [(2, 5, 3), (3, 6, 3)]
