"""The search's recommendation machinery: resampling per trial, out-of-fold predictions, greedy ensemble
selection, `hpo evaluate --ensemble`, the recommendation rules and the search-quality benchmark."""

from __future__ import annotations

import json
import re
import statistics
import sys
import tomllib
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo import app
from hpo.errors import HpoError
from hpo.readers.ensemble import (
    ENSEMBLE_KEY,
    OOF_KEY,
    TARGETS_KEY,
    decode_probabilities,
    encode_probabilities,
    encode_targets,
    select,
)
from hpo.readers.html_report import build_report
from hpo.readers.listing import list_studies
from hpo.readers.results import pick_trial, recommendation, standard_error
from hpo.search.objective import Objective, wilcoxon_epoch
from hpo.spec.study_spec import parse_spec
from hpo.training.data import cv_pairs, load_mnist

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[study]
name = "tiny"
seed = 3
pruner = "none"
resample = "{resample}"
[train]
folds = 2
epochs = 1
train_pairs = 100
[space]
lr = {{ low = 1e-3, high = 1e-2, log = true }}
conv1_channels = 16
conv2_channels = 32
hidden = 64
head = "compare"
batch_norm = true
"""


def tiny_spec(tmp_path: Path, resample: str = "fixed") -> Path:
    path = tmp_path / f"tiny-{resample}.toml"
    path.write_text(TINY.format(resample=resample))
    return path


def test_probabilities_survive_encoding_to_within_a_quantisation_step() -> None:
    probs = [0.0, 1.0, 0.5, 0.123, float("nan"), 0.999]
    back = decode_probabilities(encode_probabilities(probs))
    assert np.isnan(back[4])
    known = [0, 1, 2, 3, 5]
    assert np.all(np.abs(back[known] - np.array(probs)[known]) <= 0.5 / 254 + 1e-12)
    assert len(encode_probabilities([0.5] * 1000)) <= 1400, "1,000 pairs fit in about 1.3 kB"


def test_greedy_selection_prefers_complementary_members_and_repeats_a_strong_one() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    # 0: right on the first half only; 1: right on the second half only; 2: hedges everywhere.
    a = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    b = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    c = np.array([0.6, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4])
    chosen = select({0: a, 1: b, 2: c}, y, 4)
    assert chosen.picks[0] == 2, "alone, the hedging member has the lowest log loss"
    assert chosen.accuracy == 1.0
    assert sum(chosen.weights.values()) == 4
    # A perfect member is chosen every time: adding any other only raises the log loss.
    perfect = np.where(y == 1, 0.99, 0.01)
    assert select({0: a, 7: perfect}, y, 3).picks == [7, 7, 7]


def test_pairs_missing_from_every_fold_are_left_out_of_selection() -> None:
    y = np.array([1, 0, 1])
    good = np.array([0.9, 0.1, np.nan])
    assert select({5: good}, y, 2).accuracy == 1.0


def test_resample_draws_folds_or_pairs_per_trial(tmp_path: Path, mnist_dir: Path) -> None:
    for resample in ("fixed", "reshuffle", "fresh"):
        spec = parse_spec(tomllib.loads(TINY.format(resample=resample)))
        pairs = cv_pairs(mnist_dir, 100, spec.seed)
        digits = load_mnist(mnist_dir, train=True) if resample == "fresh" else None
        objective = Objective(spec, pairs, torch.device("cpu"), digits=digits)
        (p1, f1), (p1b, f1b), (p2, f2) = objective._draw(1), objective._draw(1), objective._draw(2)
        assert torch.equal(f1.val_index, f1b.val_index) and torch.equal(p1.inputs, p1b.inputs), "a re-run trains alike"
        same_folds = torch.equal(f1.val_index, f2.val_index)
        same_pairs = torch.equal(p1.inputs, p2.inputs)
        assert same_folds == (resample == "fixed")
        assert same_pairs == (resample != "fresh")


@pytest.mark.parametrize("resample", ["fixed", "reshuffle"])
def test_complete_trials_store_out_of_fold_predictions_that_score_their_cv(
    tmp_path: Path, sqlite_url: str, mnist_dir: Path, resample: str
) -> None:
    options = app.OptimizeOptions(trials=2, spec=tiny_spec(tmp_path, resample), storage=sqlite_url, data_dir=mnist_dir)
    study = app.optimize(options, app.Silent()).study
    targets = np.array([int(c) for c in study.user_attrs[TARGETS_KEY]])
    assert targets.shape == (100,)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        probs = decode_probabilities(trial.user_attrs[OOF_KEY])
        assert probs.shape == (100,) and not np.isnan(probs).any(), "2 folds of 50 hold out every pair"
        oof_accuracy = ((probs >= 0.5) == (targets == 1)).mean()
        # The folds' accuracies are argmax over the same outputs; quantisation may move a pair at 0.5.
        near_half = (np.abs(probs - 0.5) <= 1 / 254).sum()
        assert abs(oof_accuracy - trial.value) <= near_half / 100 + 1e-6  # the value is float32
        assert trial.user_attrs["resample"] == resample


@pytest.mark.parametrize(("resample", "rule"), [("fixed", "lowest out-of-fold log loss"), ("fresh", "best CV")])
def test_optimize_names_the_rule_that_chose_its_recommendation(
    tmp_path: Path, sqlite_url: str, mnist_dir: Path, cli, resample: str, rule: str
) -> None:
    """Fresh pairs per trial store no out-of-fold predictions: the pick falls back to the best CV, and says so."""
    spec = tiny_spec(tmp_path, resample)
    result = cli("optimize", "--trials", 2, "--spec", spec, "--storage", sqlite_url, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.output
    assert re.search(rf"recommended trial of study 'tiny': #\d+ \({rule}\)", result.stdout), result.stdout


def test_evaluate_ensemble_trains_the_selected_members(tmp_path: Path, sqlite_url: str, mnist_dir: Path) -> None:
    spec = tiny_spec(tmp_path)
    app.optimize(app.OptimizeOptions(trials=3, spec=spec, storage=sqlite_url, data_dir=mnist_dir), app.Silent())
    options = app.EvaluateOptions(study="tiny", storage=sqlite_url, data_dir=mnist_dir, rounds=2, pairs=200, ensemble=3)
    told: list[tuple[str, ...]] = []

    class Events:  # what the progress bar is told: configurations trained, not epochs
        def started(self, description: str, total: int, unit: str = "epochs") -> None:
            told.append(("started", str(total), unit))

        def epoch(self, done: int) -> None:
            told.append(("done", str(done)))

        def stopped(self) -> None:
            told.append(("stopped",))

    result = app.evaluate(options, Events())
    record = result.record
    assert len(record["picks"]) == 3
    members = len(record["members"])
    assert told[0] == ("started", str(members), "configurations trained") and told[-1] == ("stopped",)
    assert told[-2] == ("done", str(members)), told
    assert [m["weight"] for m in record["members"]] == [1, 1, 1], "each pick its own network"
    assert len(result.evaluation.accuracies) == 2 and all(0.5 < a <= 1 for a in result.evaluation.accuracies)
    assert {m.trial for m, _ in result.members} == set(record["picks"])
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    assert study.user_attrs[ENSEMBLE_KEY]["picks"] == record["picks"], "kept for the report and `hpo studies`"
    (row,) = list_studies(sqlite_url)
    assert row.ensemble.startswith(f"{100 * result.evaluation.mean:.2f} ± ")
    assert all(f"#{m['trial']} x{record['picks'].count(m['trial'])}" in row.ensemble for m in record["members"])
    assert "retrain" in row.ensemble, "the default mode: a trial picked twice is two networks"
    page = build_report(study)
    assert "Ensemble of the leaders on test pairs" in page and f"{100 * result.evaluation.mean:.2f} ±" in page
    with pytest.raises(HpoError, match="leave out --trial"):
        app.evaluate(app.EvaluateOptions(study="tiny", storage=sqlite_url, trial=0, ensemble=2))


def test_evaluate_ensemble_refuses_a_study_of_fresh_pairs(tmp_path: Path, sqlite_url: str, mnist_dir: Path) -> None:
    spec = tiny_spec(tmp_path, "fresh")
    app.optimize(app.OptimizeOptions(trials=1, spec=spec, storage=sqlite_url, data_dir=mnist_dir), app.Silent())
    with pytest.raises(HpoError, match="no out-of-fold predictions"):
        app.evaluate(app.EvaluateOptions(study="tiny", storage=sqlite_url, data_dir=mnist_dir, ensemble=2))


def test_a_trial_picked_twice_is_one_network_weighted_or_two_networks_retrained(
    tmp_path: Path, sqlite_url: str, mnist_dir: Path
) -> None:
    from hpo.app.ensemble import members_for
    from hpo.training.ensemble import train_and_test_ensemble, train_member
    from hpo.training.rounds import round_pairs

    options = app.OptimizeOptions(trials=1, spec=tiny_spec(tmp_path), storage=sqlite_url, data_dir=mnist_dir)
    study = app.optimize(options, app.Silent()).study
    weighted = members_for(study, [0, 0], "weighted", None)
    retrained = members_for(study, [0, 0], "retrain", None)
    assert [(m.trial, m.copy, m.weight) for m in weighted] == [(0, 0, 2)]
    assert [(m.trial, m.copy, m.weight) for m in retrained] == [(0, 0, 1), (0, 1, 1)]
    data = round_pairs(mnist_dir, 2, 200, 0)
    first, second = (train_member(m, data, seed=0) for m in retrained)
    assert not torch.equal(first.probabilities, second.probabilities), "two copies are two networks"
    _, alone = train_and_test_ensemble(weighted, data, seed=0)
    assert alone[0].accuracies == first.alone.accuracies, "a copy trains the same in any ensemble"
    together, _ = train_and_test_ensemble(retrained, data, seed=0)
    mean = (first.probabilities + second.probabilities) / 2
    expected = ((mean >= 0.5).long() == data.test.targets[data.test_index]).float().mean(1).tolist()
    assert together.accuracies == pytest.approx(expected)


def test_evaluate_ensemble_of_seeds_trains_the_recommended_trial_k_times_without_selection(
    tmp_path: Path, sqlite_url: str, mnist_dir: Path
) -> None:
    spec = tiny_spec(tmp_path, "fresh")  # no out-of-fold predictions: selection could not run
    app.optimize(app.OptimizeOptions(trials=2, spec=spec, storage=sqlite_url, data_dir=mnist_dir), app.Silent())
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    recommended = pick_trial(study, None).number
    options = app.EvaluateOptions(
        study="tiny", storage=sqlite_url, data_dir=mnist_dir, rounds=2, pairs=200, ensemble=3, ensemble_mode="seeds"
    )
    result = app.evaluate(options)
    record = result.record
    assert record["mode"] == "seeds" and record["picks"] == [recommended] * 3 and "oof_accuracy" not in record
    assert [(m["trial"], m["copy"], m["weight"]) for m in record["members"]] == [(recommended, c, 1) for c in range(3)]
    (row,) = list_studies(sqlite_url)
    assert f"(3 seeds: #{recommended} x3)" in row.ensemble
    page = build_report(optuna.load_study(study_name="tiny", storage=sqlite_url))
    assert "3 the recommended trial, trained" in page
    with pytest.raises(HpoError, match="unknown ensemble mode 'mean'"):
        app.evaluate(
            app.EvaluateOptions(study="tiny", storage=sqlite_url, data_dir=mnist_dir, ensemble=2, ensemble_mode="mean")
        )


def _trial(value: float, folds: list[float], n_params: int, **attrs: str) -> optuna.trial.FrozenTrial:
    return create_trial(
        value=value,
        params={"lr": 1e-3},
        distributions={"lr": FloatDistribution(1e-4, 1e-2)},
        user_attrs={"fold_accuracies": folds, "n_params": n_params, **attrs},
    )


def test_recommendation_rules() -> None:
    study = optuna.create_study(direction="maximize")
    scattered = [0.90, 1.00, 0.95, 0.97, 0.93]  # mean 0.95, large spread
    steady = [0.948, 0.946, 0.947, 0.945, 0.949]  # mean 0.947, tight
    small = [0.949, 0.944, 0.946, 0.947, 0.949]  # mean 0.947, within one SE of the best, fewest parameters
    far = [0.80, 0.81, 0.82, 0.80, 0.82]
    for folds, n in ((scattered, 90_000), (steady, 80_000), (small, 30_000), (far, 10_000)):
        study.add_trial(_trial(statistics.fmean(folds), folds, n))
    assert standard_error(study.trials[0]) == pytest.approx(statistics.stdev(scattered) / 5**0.5)
    assert pick_trial(study, None, "best").number == 0
    assert pick_trial(study, None).number == 0, "the default rule: the best CV score"
    assert pick_trial(study, None, "one-se").number == 2, "the smallest within one SE; not #3, which is far below"
    assert pick_trial(study, None, "lcb").number in (1, 2), "a steady fold spread beats a lucky one"
    assert pick_trial(study, None, "logloss").number == 0, "no stored predictions: the best CV score"
    assert recommendation(study, "logloss").rule == "best", "and says so"
    with pytest.raises(HpoError, match="--pick must be one of"):
        pick_trial(study, None, "nope")
    with pytest.raises(HpoError, match="--pick must be one of best, one-se, lcb, logloss; got 'confirmed'"):
        pick_trial(study, None, "confirmed")  # re-scoring the leaders went with its rule


def test_logloss_rule_picks_the_leader_whose_out_of_fold_probabilities_fit_best() -> None:
    study = optuna.create_study(direction="maximize")
    targets = [1, 0] * 50
    study.set_user_attr(TARGETS_KEY, encode_targets(targets))
    # Both right on 99 pairs of 100; the first by a hair and with one confident miss, the second
    # sure of every right answer and unsure of its miss: a better fit that accuracy cannot see.
    lucky = [0.55 if y else 0.45 for y in targets[:-1]] + [0.99]
    sure = [0.95 if y else 0.05 for y in targets[:-1]] + [0.6]
    for value, probs in ((0.991, lucky), (0.990, sure)):
        study.add_trial(_trial(value, [value] * 3, 20_000, oof=encode_probabilities(probs)))
    assert pick_trial(study, None, "best").number == 0
    assert pick_trial(study, None, "logloss").number == 1
    assert recommendation(study, "logloss").rule == "logloss"


def test_search_benchmark_quick_mode(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("search", None)
    import search

    out = tmp_path / "search.json"
    report = search.main(["--quick", "--strategies", "tpe/median/fixed", "--seeds", "0", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["table"] == report["table"]
    rules = {row["rule"] for row in saved["rows"]}
    assert rules == {"best", "one-se", "lcb", "logloss", "ensemble-2"}
    for row in saved["rows"]:
        assert 0.5 < row["test_mean"] <= 1 and row["complete"] + row["pruned"] >= 3
        assert len(row["test_accuracies"]) == 2, "--quick tests on 2 rounds"
    line = next(x for x in saved["table"] if x["rule"] == "best")
    assert line["seeds"] == 2 and line["worst"] == min(line["per_seed"])
    assert "| tpe/median/fixed | best |" in search.markdown(saved["table"])


def test_wilcoxon_pruner_reads_each_folds_accuracy_at_its_checkpoint(
    tmp_path: Path, sqlite_url: str, mnist_dir: Path
) -> None:
    spec = tiny_spec(tmp_path)
    options = app.OptimizeOptions(
        trials=3, spec=spec, storage=sqlite_url, data_dir=mnist_dir, pruner="wilcoxon", epochs=3
    )
    study = app.optimize(options, app.Silent()).study
    assert wilcoxon_epoch(3) == 1 and wilcoxon_epoch(25) == 9
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        assert sorted(trial.intermediate_values) == [0, 1], "fold f's accuracy at the checkpoint as step f"
