"""benchmarks/paired.py: a change tested on the same rounds as an `hpo evaluate --json` record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import paired


def test_no_change_reproduces_the_record_round_for_round(evaluate_record: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.json"
    assert paired.main([str(evaluate_record), "--set", "repair=false", "--threads", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["accuracies"] == json.loads(evaluate_record.read_text())["accuracies"]
    assert row["difference_points"] == 0.0


def test_a_change_and_more_epochs_are_tested_on_the_records_rounds(evaluate_record: Path, tmp_path: Path) -> None:
    out = tmp_path / "longer.json"
    assert (
        paired.main(
            [str(evaluate_record), "--epochs", "2", "--set", "repair=true", "--threads", "1", "--out", str(out)]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    row = saved["rows"][0]
    assert saved["changes"] == {"repair": True} and row["epochs"] == 2 and row["params"]["repair"] is True
    assert row["before_accuracies"] == json.loads(evaluate_record.read_text())["accuracies"]
    assert row["accuracies"] != row["before_accuracies"]


def test_another_seed_tests_both_sides_afresh_on_its_rounds(evaluate_record: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed.json"
    assert (
        paired.main([str(evaluate_record), "--set", "repair=false", "--seed", "7", "--threads", "1", "--out", str(out)])
        == 0
    )
    row = json.loads(out.read_text())["rows"][0]
    assert row["seed"] == 7 and row["difference_points"] == 0.0
    assert row["before_accuracies"] != json.loads(evaluate_record.read_text())["accuracies"]


def test_values_are_read_as_toml_would_read_them() -> None:
    assert [paired.parse_value(v) for v in ("true", "false", "3", "0.5", "mlp")] == [True, False, 3, 0.5, "mlp"]
