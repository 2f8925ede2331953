"""benchmarks/paired.py: a change tested on the same rounds as an `hpo evaluate --json` record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import paired

SPEC = """
[study]
name = "fixed"
[train]
epochs = 1
[space]
weight_sharing = true
aux_weight = 1.0
lr = 0.003
batch_norm = true
conv1_channels = 8
conv2_channels = 16
hidden = 32
"""


@pytest.fixture
def record(cli, tmp_path, mnist_dir, monkeypatch) -> Path:
    """A real `hpo evaluate --json` record of a small fixed spec (2 rounds of 100 pairs, 1 epoch)."""
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    spec = tmp_path / "fixed.toml"
    spec.write_text(SPEC)
    args = ["evaluate", "--spec", spec, "--rounds", "2", "--pairs", "100", "--threads", "1", "--json"]
    result = cli(*args, "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "record.json"
    path.write_text(result.stdout)
    return path


def test_no_change_reproduces_the_record_round_for_round(record: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.json"
    assert paired.main([str(record), "--set", "repair=false", "--threads", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["accuracies"] == json.loads(record.read_text())["accuracies"]
    assert row["difference_points"] == 0.0


def test_a_change_and_more_epochs_are_tested_on_the_records_rounds(record: Path, tmp_path: Path) -> None:
    out = tmp_path / "longer.json"
    assert paired.main([str(record), "--epochs", "2", "--set", "repair=true", "--threads", "1", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    row = saved["rows"][0]
    assert saved["changes"] == {"repair": True} and row["epochs"] == 2 and row["params"]["repair"] is True
    assert row["before_accuracies"] == json.loads(record.read_text())["accuracies"]
    assert row["accuracies"] != row["before_accuracies"]


def test_another_seed_tests_both_sides_afresh_on_its_rounds(record: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed.json"
    assert paired.main([str(record), "--set", "repair=false", "--seed", "7", "--threads", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["seed"] == 7 and row["difference_points"] == 0.0
    assert row["before_accuracies"] != json.loads(record.read_text())["accuracies"]


def test_values_are_read_as_toml_would_read_them() -> None:
    assert [paired.parse_value(v) for v in ("true", "false", "3", "0.5", "mlp")] == [True, False, 3, 0.5, "mlp"]
