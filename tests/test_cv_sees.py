"""benchmarks/cv_sees.py: a paired change scored by the study's own cross-validation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import cv_sees
import paired

CV_SPEC = """
[study]
name = "cv"
[train]
folds = 3
epochs = 1
train_pairs = 150
[space]
lr = 0.003
"""


def scored(record: Path, tmp_path: Path, change: str) -> dict:
    pairs_out, cv_out = tmp_path / f"paired-{change}.json", tmp_path / f"cv-{change}.json"
    assert paired.main([str(record), "--set", change, "--threads", "1", "--out", str(pairs_out)]) == 0
    spec = tmp_path / "cv.toml"
    spec.write_text(CV_SPEC)
    assert cv_sees.main([str(pairs_out), "--spec", str(spec), "--inits", "1", "--out", str(cv_out)]) == 0
    return json.loads(cv_out.read_text())["rows"][0]


def test_the_same_configuration_scores_the_same_cv_and_a_wider_one_another(
    evaluate_record: Path, tmp_path: Path
) -> None:
    same = scored(evaluate_record, tmp_path, "conv1_channels=8")
    assert same["cv_before"] == same["cv_after"] and same["logloss_before"] == same["logloss_after"]
    assert 0.0 < same["cv_before"] <= 1.0 and math.isfinite(same["logloss_before"])
    assert same["test_difference_points"] == 0.0
    wider = scored(evaluate_record, tmp_path, "conv1_channels=16")
    assert wider["cv_before"] == same["cv_before"]
    assert (wider["cv_after"], wider["logloss_after"]) != (same["cv_after"], same["logloss_after"])


def test_a_missing_paired_file_is_one_line_and_exit_status_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cv_sees.main([str(tmp_path / "missing.json")])
    assert stop.value.code == 2
    assert "no paired.py JSON at" in capsys.readouterr().err
