"""benchmarks/ensemble_modes.py: the ensemble modes of one study, tested on the same rounds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ensemble_modes
from test_search_quality import tiny_spec

from hpo import app
from hpo.readers.results import pick_trial


def test_each_mode_tests_as_hpo_evaluate_would_from_networks_trained_once(
    tmp_path: Path, sqlite_url: str, mnist_dir: Path, capsys
) -> None:
    options = app.OptimizeOptions(trials=3, spec=tiny_spec(tmp_path), storage=sqlite_url, data_dir=mnist_dir)
    app.optimize(options, app.Silent())
    out = tmp_path / "modes.json"
    args = ["--storage", sqlite_url, "--study", "tiny", "--k", "3", "--rounds", "2", "--pairs", "200"]
    assert ensemble_modes.main([*args, "--data-dir", str(mnist_dir), "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    modes = result["modes"]
    assert set(modes) == {"weighted", "retrain", "seeds"}
    recommended = pick_trial(optuna.load_study(study_name="tiny", storage=sqlite_url), None).number
    assert modes["seeds"]["picks"] == [recommended] * 3
    assert sorted(modes["weighted"]["picks"]) == sorted(modes["retrain"]["picks"]), "one selection, two modes"
    assert sum(w for _, _, w in modes["weighted"]["networks"]) == 3 and len(modes["retrain"]["networks"]) == 3
    trained = capsys.readouterr().out.count("trained #")
    distinct = {(t, c) for r in modes.values() for t, c, _ in r["networks"]}
    assert trained == len(distinct), "a network two modes share trains once"
    for mode in ("weighted", "retrain", "seeds"):
        evaluated = app.evaluate(
            app.EvaluateOptions(
                study="tiny",
                storage=sqlite_url,
                data_dir=mnist_dir,
                rounds=2,
                pairs=200,
                threads=1,
                ensemble=3,
                ensemble_mode=mode,
            )
        )
        assert evaluated.evaluation.accuracies == modes[mode]["accuracies"], f"{mode}: the command's own figure"
    assert "| seeds |" in ensemble_modes.table(result)
