"""Warm start from the published configurations, the parameter budget, and multi-objective studies."""

import optuna
import pytest
from optuna.trial import TrialState

from hpo.search.warm_start import PUBLISHED, fit_to_space
from hpo.spec.space import Choice, Fixed, FloatRange, IntRange
from hpo.spec.study_spec import load_spec, parse_spec


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_published_values_are_fitted_into_the_space() -> None:
    space = {
        "lr": FloatRange(1e-3, 1e-2, log=True),
        "hidden": IntRange(64, 256, step=64),
        "head": Choice(("compare",)),
        "beta1": FloatRange(0.5, 0.99),
    }
    fitted = fit_to_space({"lr": 6e-4, "hidden": 200, "head": "mlp", "beta1": 0.6, "dropout": 0.5}, space)
    assert fitted == {"lr": 1e-3, "hidden": 192, "beta1": 0.6}


def test_new_default_study_starts_with_the_published_configurations(cli, write_spec, sqlite_url, mnist_dir) -> None:
    spec = write_spec().read_text().replace('pruner = "median"', 'pruner = "median"\nenqueue_published = true')
    path = write_spec(spec)
    result = cli(
        "optimize", "--trials", 4, "--spec", path, "--storage", sqlite_url, "--data-dir", mnist_dir, "--epochs", 1
    )
    assert result.exit_code == 0, result.stderr
    trials = trials_of(sqlite_url, "small")
    sources = [t.user_attrs.get("published") for t in trials]
    assert sources[:3] == [p.source for p in PUBLISHED]
    assert sources[3] is None, "after the warm start the sampler takes over"
    report_a = trials[0]
    assert report_a.params["lr"] == pytest.approx(6e-4) and report_a.params["beta1"] == pytest.approx(0.6)
    assert report_a.params["weight_sharing"] is True and report_a.state == TrialState.COMPLETE
    # Continuing the study does not queue them again.
    assert (
        cli(
            "optimize", "--trials", 5, "--spec", path, "--storage", sqlite_url, "--data-dir", mnist_dir, "--epochs", 1
        ).exit_code
        == 0
    )
    assert [t.user_attrs.get("published") for t in trials_of(sqlite_url, "small")].count("report A") == 1


def test_no_enqueue_flag_turns_the_warm_start_off(cli, sqlite_url, mnist_dir) -> None:
    result = cli(
        "optimize",
        "--trials",
        1,
        "--epochs",
        1,
        "--folds",
        2,
        "--no-enqueue-published",
        "--study",
        "cold",
        "--storage",
        sqlite_url,
        "--data-dir",
        mnist_dir,
    )
    assert result.exit_code == 0, result.stderr
    assert "published" not in trials_of(sqlite_url, "cold")[0].user_attrs


def test_parameter_budget_is_an_optuna_constraint_and_prunes_over_budget_trials(
    cli, write_spec, sqlite_url, mnist_dir
) -> None:
    spec = write_spec(
        """
        [study]
        name = "budget"
        sampler = "random"
        pruner = "none"
        [train]
        folds = 2
        epochs = 1
        train_pairs = 100
        [space]
        hidden = { choices = [8, 512] }
        conv1_channels = 4
        conv2_channels = 8
        """
    )
    result = cli(
        "optimize",
        "--trials",
        6,
        "--spec",
        spec,
        "--storage",
        sqlite_url,
        "--data-dir",
        mnist_dir,
        "--max-params",
        10000,
    )
    assert result.exit_code == 0, result.stderr
    trials = trials_of(sqlite_url, "budget")
    assert {t.params["hidden"] for t in trials} == {8, 512}
    for t in trials:
        over = t.params["hidden"] == 512
        assert (t.constraints["max_params"] > 0) == over
        assert t.state == (TrialState.PRUNED if over else TrialState.COMPLETE)
        assert (t.user_attrs["n_params"] > 10000) == over
    best = optuna.load_study(study_name="budget", storage=sqlite_url).best_trial
    assert best.params["hidden"] == 8


def test_pareto_spec_runs_a_two_objective_study(cli, sqlite_url, mnist_dir) -> None:
    result = cli(
        "optimize",
        "--spec",
        "pareto",
        "--trials",
        3,
        "--epochs",
        1,
        "--folds",
        2,
        "--storage",
        sqlite_url,
        "--data-dir",
        mnist_dir,
    )
    assert result.exit_code == 0, result.stderr
    assert "Pareto front" in result.stdout
    study = optuna.load_study(study_name="pareto", storage=sqlite_url)
    assert study.metric_names == ["accuracy", "params"]
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert t.values[1] == t.user_attrs["n_params"]
        assert t.values[0] == pytest.approx(sum(t.user_attrs["fold_accuracies"]) / 2)
    assert study.best_trials


@pytest.mark.parametrize(
    "study,message",
    [
        ({"name": "x", "objectives": ["accuracy", "params"], "directions": ["maximize"]}, "one direction each"),
        (
            {
                "name": "x",
                "objectives": ["accuracy", "beauty"],
                "directions": ["maximize", "maximize"],
                "pruner": "none",
            },
            "unknown objective 'beauty'",
        ),
        (
            {"name": "x", "objectives": ["accuracy", "params"], "directions": ["maximize", "minimize"]},
            "pruners need one objective",
        ),
        ({"name": "x", "max_params": 0}, "max_params must be at least 1"),
        ({"name": "x", "enqueue_published": "yes"}, "enqueue_published must be true or false"),
    ],
)
def test_bad_objective_settings_are_rejected(study, message) -> None:
    from hpo.errors import HpoError

    with pytest.raises(HpoError, match=message):
        parse_spec({"study": study})


def test_default_spec_enqueues_searches_the_new_choices_and_fixes_what_cv_cannot_judge() -> None:
    spec = load_spec("twin")
    assert spec.enqueue_published
    assert spec.space["head"] == Choice(("compare", "mlp"))
    assert isinstance(spec.space["hidden"], IntRange)
    assert (spec.space["conv1_channels"], spec.space["conv2_channels"]) == (Fixed(32), Fixed(64)), (
        "searched, the widths' picks tested 0.19 points below the same configurations at 32/64"
    )
    assert (spec.space["shift"], spec.space["schedule"]) == (Fixed(1), Fixed("cosine"))
    assert spec.space["batch_norm"] == Fixed(True), "a study that searched it could lock onto networks without it"
    assert spec.train.test_epochs > spec.train.epochs, "trials only rank; the recommendation trains longer"


def test_report_a_spec_is_the_published_report_a_configuration() -> None:
    from hpo.search.warm_start import REPORT_A

    spec = load_spec("report-a")
    assert spec.is_fixed
    assert {name: p.value for name, p in spec.space.items()} == REPORT_A
    assert (spec.train.epochs, spec.train.batch_size) == (50, 5)
