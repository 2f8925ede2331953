"""`hpo evaluate`: R rounds of fresh train/test pairs on real data, the published table, the stored result."""

import json
import statistics

import optuna
import pytest
import torch

from hpo.readers.results import full_params, pick_trial
from hpo.spec.registry import configs
from hpo.training.rounds import round_pairs

FAST = ["--rounds", "3", "--pairs", "100", "--epochs", "1", "--threads", "1"]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_each_round_has_its_own_pairs_standardised_with_its_own_training_statistics(mnist_dir) -> None:
    data = round_pairs(mnist_dir, rounds=3, n=100, seed=7)
    assert data.train_index.shape == data.test_index.shape == (3, 100)
    blocks = [data.train.inputs[row] for row in data.train_index]
    for block in blocks:
        assert block.mean().item() == pytest.approx(0.0, abs=1e-4)
        assert block.std().item() == pytest.approx(1.0, abs=1e-4)
    assert not torch.equal(blocks[0], blocks[1]) and not torch.equal(blocks[1], blocks[2])
    assert not torch.equal(data.test.inputs[data.test_index[0]], blocks[0])
    again = round_pairs(mnist_dir, rounds=3, n=100, seed=7)
    assert torch.equal(again.train.inputs, data.train.inputs) and torch.equal(again.test.classes, data.test.classes)
    assert not torch.equal(round_pairs(mnist_dir, rounds=1, n=100, seed=8).train.inputs, blocks[0])


def test_configs_take_sampled_and_fixed_params_and_the_trials_training_settings() -> None:
    model, train = configs(
        {"weight_sharing": False, "conv1_channels": 8, "lr": 0.01, "batch_size": 50, "repeat": 2}, 4, 25
    )
    assert (model.weight_sharing, model.conv1_channels) == (False, 8)
    assert (train.lr, train.batch_size, train.epochs) == (0.01, 50, 4)


def test_recommended_trial_prints_the_published_table_and_is_saved_in_the_study(cli, small_study, mnist_dir) -> None:
    url, name = small_study
    best = pick_trial(load(url, name), None)
    result = cli("evaluate", "--study", name, "--storage", url, "--data-dir", mnist_dir, *FAST)
    assert result.exit_code == 0, result.stderr
    assert f"trial #{best.number} of study '{name}'" in result.stdout
    for row in (
        "test accuracy (%)",
        "digit (auxiliary) accuracy (%)",
        "parameters",
        "seconds per training",
        "amortised",
        "round accuracies",
    ):
        assert row in result.stdout
    saved = load(url, name).user_attrs["evaluation"]
    assert saved["trial"] == best.number and saved["rounds"] == 3 and saved["seed"] == 0
    assert len(saved["accuracies"]) == 3
    assert saved["mean"] == pytest.approx(statistics.fmean(saved["accuracies"]))
    assert saved["std"] == pytest.approx(statistics.stdev(saved["accuracies"]))
    assert f"{100 * saved['mean']:.2f} ± {100 * saved['std']:.2f}" in result.stdout
    assert saved["n_params"] == best.user_attrs["n_params"]
    assert saved["params"] == full_params(best) and saved["params"]["conv1_channels"] == 8


def test_json_output_is_reproducible_from_the_seed_and_names_the_chosen_trial(cli, small_study, mnist_dir) -> None:
    url, name = small_study
    args = ["evaluate", "--study", name, "--trial", "1", "--storage", url, "--data-dir", mnist_dir, "--json", *FAST]
    first = json.loads(cli(*args).stdout)
    second = json.loads(cli(*args).stdout)
    other = json.loads(cli(*args, "--seed", "5").stdout)
    assert first["trial"] == 1 and len(first["accuracies"]) == 3
    assert first["params"] == full_params(load(url, name).trials[1])
    assert first["accuracies"] == second["accuracies"], "same seed, same pairs and initialisation"
    assert other["accuracies"] != first["accuracies"] and other["seed"] == 5
    assert all(0.0 <= a <= 1.0 for a in first["accuracies"] + first["digit_accuracies"])


def test_a_fixed_spec_is_evaluated_without_any_study(cli, write_spec, tmp_path, mnist_dir) -> None:
    spec = write_spec(
        """
        [study]
        name = "fixed"
        [train]
        epochs = 5
        [space]
        weight_sharing = true
        aux_weight = 1.0
        lr = 0.003
        conv1_channels = 8
        conv2_channels = 16
        hidden = 32
        """
    )
    result = cli(
        "evaluate",
        "--spec",
        spec,
        "--data-dir",
        mnist_dir,
        "--rounds",
        "2",
        "--pairs",
        "200",
        "--threads",
        "1",
        "--json",
        "--storage",
        f"sqlite:///{tmp_path / 'none.db'}",
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["study"] is None and record["epochs"] == 5 and record["pairs"] == 200
    assert record["params"]["conv1_channels"] == 8 and record["trial"] is None
    assert record["mean"] > 0.62, "5 epochs with the aux loss learn well above chance (about 55 %)"
    assert not (tmp_path / "none.db").exists()


def test_a_trial_is_tested_for_its_specs_final_epochs_unless_evaluate_says_otherwise(
    cli, write_spec, tmp_path, mnist_dir
) -> None:
    """[train] final_epochs: trials train `epochs`, the recommendation's test trains longer."""
    text = write_spec(name="final", pruner="none", epochs=1).read_text()
    spec = write_spec(text.replace("train_pairs = 200", "train_pairs = 200\nfinal_epochs = 3"), name="final")
    url = f"sqlite:///{tmp_path / 'final.db'}"
    common = ["--storage", url, "--data-dir", mnist_dir]
    assert cli("optimize", "--trials", "1", "--spec", spec, *common).exit_code == 0
    trial = load(url, "final").trials[0]
    assert len(trial.intermediate_values) == 1, "the trial trained its 1 epoch"
    assert trial.user_attrs["train"]["final_epochs"] == 3
    fast = ["--rounds", "2", "--pairs", "100", "--threads", "1", "--json"]
    record = json.loads(cli("evaluate", "--study", "final", *common, *fast).stdout)
    assert record["epochs"] == 3
    record = json.loads(cli("evaluate", "--study", "final", *common, *fast, "--epochs", "2").stdout)
    assert record["epochs"] == 2
