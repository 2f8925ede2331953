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


def scored(record: Path, tmp_path: Path, change: str) -> dict:
    pairs_out, cv_out = tmp_path / f"paired-{change}.json", tmp_path / f"cv-{change}.json"
    assert paired.main([str(record), "--set", change, "--threads", "1", "--out", str(pairs_out)]) == 0
    spec = tmp_path / "cv.toml"
    spec.write_text(CV_SPEC)
    assert cv_sees.main([str(pairs_out), "--spec", str(spec), "--inits", "1", "--out", str(cv_out)]) == 0
    return json.loads(cv_out.read_text())["rows"][0]


def test_the_same_configuration_scores_the_same_cv_and_a_wider_one_another(record: Path, tmp_path: Path) -> None:
    same = scored(record, tmp_path, "conv1_channels=8")
    assert same["cv_before"] == same["cv_after"] and same["logloss_before"] == same["logloss_after"]
    assert 0.0 < same["cv_before"] <= 1.0 and math.isfinite(same["logloss_before"])
    assert same["test_difference_points"] == 0.0
    wider = scored(record, tmp_path, "conv1_channels=16")
    assert wider["cv_before"] == same["cv_before"]
    assert (wider["cv_after"], wider["logloss_after"]) != (same["cv_after"], same["logloss_after"])
