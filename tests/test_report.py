"""`hpo report` and `hpo export` on real studies, single- and multi-objective; the ablation spec."""

import csv
import io
import json
import re
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.readers.html_report import ablation_cells, build_report
from hpo.readers.results import pick_trial
from hpo.rng import generator
from hpo.spec.registry import configs
from hpo.spec.space import Choice, Fixed
from hpo.spec.study_spec import load_spec, parse_spec
from hpo.training.batched import train_members
from hpo.training.data import cv_pairs, stratified_folds

REPO = Path(__file__).resolve().parent.parent

SINGLE_SECTIONS = [
    "Optimisation history",
    "Intermediate values (pruning curves)",
    "Parameter importances",
    "Parallel coordinates",
    "Slices",
    "Weight sharing x auxiliary loss",
    "Top 10 trials",
]


def plotly_divs(page: str) -> int:
    return page.count('class="plotly-graph-div"')


def test_report_is_one_self_contained_file_with_every_section(cli, small_study, mnist_dir, tmp_path) -> None:
    url, name = small_study
    assert (
        cli(
            "evaluate",
            "--study",
            name,
            "--storage",
            url,
            "--data-dir",
            mnist_dir,
            "--rounds",
            "2",
            "--pairs",
            "100",
            "--epochs",
            "1",
            "--threads",
            "1",
        ).exit_code
        == 0
    )
    out = tmp_path / "report.html"
    result = cli("report", "--study", name, "--storage", url, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    page = out.read_text()
    for title in [*SINGLE_SECTIONS, "Evaluation on test pairs"]:
        assert f"<h2>{title}</h2>" in page, title
    assert "<h2>Pareto front</h2>" not in page
    assert not re.search(r"<script[^>]+src=", page), "plotly.js is inlined, nothing is fetched"
    # history, intermediates, importances, parallel, slices, the cell bars, the per-round bars
    assert plotly_divs(page) == 7
    study = optuna.load_study(study_name=name, storage=url)
    evaluation = study.user_attrs["evaluation"]
    assert f"{100 * evaluation['mean']:.2f} ± {100 * evaluation['std']:.2f} % over 2 rounds" in page
    assert evaluation["trial"] == pick_trial(study, None).number, "evaluate tests the recommended trial"
    assert f"recommended trial</td><td>#{evaluation['trial']}: CV" in page


def test_grid_ablation_groups_cv_accuracy_by_sharing_and_aux_loss(
    cli, write_spec, sqlite_url, mnist_dir, tmp_path
) -> None:
    spec = write_spec(
        """
        [study]
        name = "abl"
        sampler = "grid"
        pruner = "none"
        [train]
        folds = 2
        epochs = 1
        train_pairs = 100
        [space]
        weight_sharing = { choices = [true, false] }
        aux_weight = { choices = [0.0, 1.0] }
        repeat = { choices = [0, 1] }
        conv1_channels = 4
        conv2_channels = 8
        hidden = 16
        """
    )
    assert (
        cli("optimize", "--trials", 8, "--spec", spec, "--storage", sqlite_url, "--data-dir", mnist_dir).exit_code == 0
    )
    study = optuna.load_study(study_name="abl", storage=sqlite_url)
    cells = ablation_cells(study)
    assert [(c.weight_sharing, c.aux_loss, len(c.values)) for c in cells] == [
        (True, True, 2),
        (True, False, 2),
        (False, True, 2),
        (False, False, 2),
    ]
    for c in cells:
        expected = [
            t.value
            for t in study.trials
            if t.params["weight_sharing"] == c.weight_sharing and (t.params["aux_weight"] > 0) == c.aux_loss
        ]
        assert c.mean == pytest.approx(statistics.fmean(expected))
    result = cli("report", "--study", "abl", "--storage", sqlite_url, "--out", tmp_path / "abl.html")
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.search(r"\b(on|off)\b.*\b(on|off)\b", line)]
    assert len(rows) == 4 and all(f"{c.mean:.4f}" in row for c, row in zip(cells, rows))


def test_ablation_spec_is_the_published_grid_with_repeats() -> None:
    spec = load_spec("ablation")
    assert spec.sampler == "grid" and spec.pruner == "none"
    assert spec.space["weight_sharing"] == Choice((True, False))
    assert spec.space["aux_weight"] == Choice((0.0, 1.0))
    assert len(spec.space["repeat"].choices) >= 2
    grid = spec.grid()
    assert set(grid) == {"weight_sharing", "aux_weight", "repeat"}
    assert all(isinstance(p, Fixed) for n, p in spec.space.items() if n not in grid)


@pytest.fixture
def two_objective_study(mnist_dir, sqlite_url) -> optuna.Study:
    """A real (CV accuracy, parameter count) study: 4 trials of a tiny net, trained through ask/tell."""
    spec = parse_spec(
        {
            "study": {"name": "pareto"},
            "train": {"folds": 2, "epochs": 1, "train_pairs": 100},
            "space": {
                "conv1_channels": {"choices": [2, 4, 8]},
                "lr": {"low": 1e-3, "high": 1e-2, "log": True},
                "conv2_channels": 8,
                "hidden": 16,
            },
        }
    )
    pairs = cv_pairs(mnist_dir, 100, 0, download=False)
    folds = stratified_folds(pairs.targets, 2, generator(0, "folds"))
    study = optuna.create_study(
        study_name="pareto",
        storage=sqlite_url,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    for _ in range(4):
        trial = study.ask()
        params = spec.suggest(trial)
        model_cfg, train_cfg = configs(params, spec.train.epochs, spec.train.batch_size)
        result = train_members(
            model_cfg, train_cfg, pairs, folds.train_index, pairs, folds.val_index, [trial.number, 99]
        )
        trial.set_user_attr("fixed_params", {"conv2_channels": 8, "hidden": 16})
        study.tell(trial, [statistics.fmean(result.accuracies), result.n_params])
    return study


def test_multi_objective_report_draws_the_pareto_front_instead(two_objective_study, cli, sqlite_url, tmp_path) -> None:
    page = build_report(two_objective_study)
    assert "<h2>Pareto front</h2>" in page and "<h2>Pareto-optimal trials</h2>" in page
    assert "<h2>Optimisation history</h2>" not in page and "<h2>Slices</h2>" not in page
    assert "<h2>Parameter importances for objective 1</h2>" in page
    # front, importances x 2, parallel coordinates (the cell summary needs weight_sharing/aux_weight)
    assert plotly_divs(page) == 4
    front = {t.number for t in two_objective_study.best_trials}
    assert front and all(f"<td>{n}</td>" in page for n in front)
    result = cli("report", "--study", "pareto", "--storage", sqlite_url, "--out", tmp_path / "p.html")
    assert result.exit_code == 0 and (tmp_path / "p.html").read_text().count("plotly-graph-div") >= 4


def test_multi_objective_evaluate_needs_a_trial_number(two_objective_study, cli, sqlite_url, mnist_dir) -> None:
    result = cli("evaluate", "--study", "pareto", "--storage", sqlite_url, "--data-dir", mnist_dir)
    assert result.exit_code == 2 and "several objectives" in result.stderr and "--trial N" in result.stderr
    number = two_objective_study.best_trials[0].number
    result = cli(
        "evaluate",
        "--study",
        "pareto",
        "--trial",
        number,
        "--storage",
        sqlite_url,
        "--data-dir",
        mnist_dir,
        "--rounds",
        "2",
        "--pairs",
        "100",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["params"]["hidden"] == 16


def test_export_csv_has_one_row_per_trial_with_full_params_and_attributes(cli, small_study) -> None:
    url, name = small_study
    trials = optuna.load_study(study_name=name, storage=url).trials
    result = cli("export", "--study", name, "--storage", url)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    for row, t in zip(rows, trials):
        assert row["state"] == t.state.name
        assert float(row["value"]) == pytest.approx(t.value)
        assert row["param_lr"] == str(t.params["lr"]) and row["param_conv1_channels"] == "8"
        assert json.loads(row["attr_fold_accuracies"]) == t.user_attrs["fold_accuracies"]


def test_export_json_to_a_file_keeps_intermediate_values_and_study_attributes(cli, small_study, tmp_path) -> None:
    url, name = small_study
    out = tmp_path / "trials.json"
    result = cli("export", "--study", name, "--storage", url, "--format", "json", "--out", out)
    assert result.exit_code == 0 and result.stdout == ""
    document = json.loads(out.read_text())
    study = optuna.load_study(study_name=name, storage=url)
    assert document["study"] == name and document["directions"] == ["maximize"]
    assert document["user_attrs"] == study.user_attrs
    assert [t["values"] for t in document["trials"]] == [t.values for t in study.trials]
    assert all(t["state"] == TrialState.COMPLETE.name for t in document["trials"])
    assert document["trials"][0]["intermediate_values"] == {"1": study.trials[0].intermediate_values[1]}
