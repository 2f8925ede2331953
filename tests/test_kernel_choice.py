"""A trial's kernel choice is made once, recorded, and reused: training it again and its test train
the same computation it did, whatever the thread count they run at."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import optuna
import pytest
import torch

import hpo.training.batched
from hpo.app import EvaluateOptions, evaluate
from hpo.kernels.dispatch import STEM, Kernels, choose
from hpo.readers.results import recipe
from hpo.search.objective import Objective
from hpo.spec.study_spec import load_spec
from hpo.training.cv import cross_validate, trial_seeds
from hpo.training.data import cv_pairs

MANY_THREADS = 3  # where the dispatch, asked afresh, would choose otherwise than on one thread


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Kernels]:
    """The kernels of every TwinNet that training builds from here on."""
    seen: list[Kernels] = []
    real = hpo.training.batched.TwinNet

    def spy(cfg, members=1, kernels=None):
        net = real(cfg, members, kernels)
        seen.append(net.kernels)
        return net

    monkeypatch.setattr(hpo.training.batched, "TwinNet", spy)
    return seen


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_retraining_and_evaluation_use_the_recorded_kernels_at_any_thread_count(
    write_spec, sqlite_url, mnist_dir, built, threads
) -> None:
    path = write_spec(epochs=1, pruner="none")
    spec = load_spec(path)
    torch.set_num_threads(1)
    study = optuna.create_study(study_name="small", storage=sqlite_url, direction="maximize")
    pairs = cv_pairs(mnist_dir, spec.train.train_pairs, spec.seed, download=False)
    objective = Objective(spec, pairs, torch.device("cpu"))
    study.enqueue_trial({"batch_norm": False})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.user_attrs["kernels"] == STEM.name == built[-1].name, "recorded what it trained with"

    torch.set_num_threads(MANY_THREADS)
    assert choose(False) != STEM, "asked afresh here, the dispatch would choose otherwise"
    # The trial's own training again, here: the same kernels, so the same fold accuracies.
    how = recipe(trial)
    again = cross_validate(
        how.params,
        how.settings,
        pairs,
        objective.folds,
        trial_seeds(spec.seed, trial.number, objective.folds.k),
        torch.device("cpu"),
        kernels=Kernels.named(how.kernels),
    )
    assert again.accuracies == trial.user_attrs["fold_accuracies"]
    assert statistics.fmean(again.accuracies) == trial.value

    options = EvaluateOptions(
        study="small", storage=sqlite_url, data_dir=mnist_dir, rounds=2, pairs=100, epochs=1, threads=MANY_THREADS
    )
    evaluate(options)
    assert built[-1] == STEM and torch.get_num_threads() == MANY_THREADS, "evaluation too"


def test_a_trial_from_before_choices_were_recorded_takes_the_dispatchs(
    write_spec, sqlite_url, mnist_dir, built, threads
) -> None:
    spec = load_spec(write_spec(epochs=1, pruner="none"))
    torch.set_num_threads(1)
    study = optuna.create_study(study_name="small", storage=sqlite_url, direction="maximize")
    pairs = cv_pairs(mnist_dir, spec.train.train_pairs, spec.seed, download=False)
    study.enqueue_trial({"batch_norm": True})
    study.optimize(Objective(spec, pairs, torch.device("cpu")), n_trials=1)
    trained = study.trials[0]
    attrs = {k: v for k, v in trained.user_attrs.items() if k != "kernels"}  # as an older release stored it
    study.add_trial(
        optuna.trial.create_trial(
            params=trained.params, distributions=trained.distributions, value=trained.value, user_attrs=attrs
        )
    )
    old = study.trials[1]
    assert recipe(old).kernels is None
    torch.set_num_threads(MANY_THREADS)
    options = EvaluateOptions(
        study="small", trial=1, storage=sqlite_url, data_dir=mnist_dir, rounds=1, pairs=100, epochs=1
    )
    evaluate(options)
    assert built[-1] == choose(True) == Kernels(first="fused")


def test_a_trial_trained_at_one_thread_retrains_and_tests_the_same_at_two(
    write_spec, sqlite_url, mnist_dir, threads
) -> None:
    """At two threads the members train in two groups (hpo.training.groups) on the same kernels,
    so a trial's CV and its test are its one-thread numbers exactly, fold by fold, round by round."""
    spec = load_spec(write_spec(epochs=2, pruner="none"))
    torch.set_num_threads(1)
    study = optuna.create_study(study_name="small", storage=sqlite_url, direction="maximize")
    pairs = cv_pairs(mnist_dir, spec.train.train_pairs, spec.seed, download=False)
    objective = Objective(spec, pairs, torch.device("cpu"))
    study.enqueue_trial({"batch_norm": True, "dropout": 0.3})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    how = recipe(trial)
    seeds = trial_seeds(spec.seed, trial.number, objective.folds.k)
    tests = {}
    for count in (1, 2):
        torch.set_num_threads(count)
        again = cross_validate(
            how.params,
            how.settings,
            pairs,
            objective.folds,
            seeds,
            torch.device("cpu"),
            kernels=Kernels.named(how.kernels),
        )
        assert again.accuracies == trial.user_attrs["fold_accuracies"], f"CV at {count} thread(s)"
        options = EvaluateOptions(
            study="small", storage=sqlite_url, data_dir=mnist_dir, rounds=4, pairs=200, epochs=2, threads=count
        )
        tests[count] = evaluate(options).evaluation.accuracies
    assert tests[1] == tests[2]
