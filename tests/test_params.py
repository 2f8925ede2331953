"""The parameter registry: each parameter declared once, and everything else agrees with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from hpo.errors import HpoError
from hpo.spec.registry import PARAMS, TrainConfig, TwinConfig, configs, markdown_table
from hpo.spec.study_spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]


def test_registry_holds_every_config_field_with_its_type_and_default() -> None:
    model = {f.name: f.default for f in fields(TwinConfig)}
    train = {f.name: f.default for f in fields(TrainConfig) if f.name != "epochs"}
    assert {n for n, p in PARAMS.items() if p.feeds == "model"} == set(model)
    assert {n for n, p in PARAMS.items() if p.feeds == "train"} == set(train)
    for name, default in {**model, **train}.items():
        assert PARAMS[name].default == default and isinstance(default, PARAMS[name].type), name
        assert PARAMS[name].ok(default), f"{name}'s default must be valid"
        assert PARAMS[name].doc, f"{name} needs a one-line description"


def test_configs_from_every_parameter_name_reach_the_right_config() -> None:
    values = {
        "weight_sharing": False,
        "head": "compare",
        "lr": 0.02,
        "schedule": "cosine",
        "batch_size": 10,
        "repeat": 1,
    }
    model, train = configs(values, epochs=3, batch_size=25)
    assert (model.weight_sharing, model.head) == (False, "compare")
    assert (train.lr, train.schedule, train.batch_size, train.epochs) == (0.02, "cosine", 10, 3)


def test_unknown_key_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(HpoError, match="unknown parameter.*dropuot"):
        configs({"dropuot": 0.5}, epochs=1, batch_size=25)


def test_spec_validation_reads_the_registry_rules_and_literal_choices() -> None:
    with pytest.raises(HpoError, match="'head' must be 'mlp' or 'compare'; got 'cnn'"):
        parse_spec({"study": {"name": "x"}, "space": {"head": "cnn"}})
    with pytest.raises(HpoError, match="'dropout' must be in \\[0, 1\\); got 1.0"):
        parse_spec({"study": {"name": "x"}, "space": {"dropout": 1.0}})


def test_docs_parameter_table_is_the_registry_table() -> None:
    text = (ROOT / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert markdown_table() in text, (
        "regenerate the table: python -c 'from hpo.spec.registry import markdown_table; print(markdown_table())'"
    )


def test_report_export_and_results_import_no_torch() -> None:
    code = (
        "import sys, hpo.readers.html_report, hpo.readers.trial_table, hpo.readers.results, hpo.search.loop, "
        "hpo.store.connect, hpo.search.study; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
