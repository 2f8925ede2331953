"""A study is pinned to its spec: another spec or other settings fail before anything is written."""

from __future__ import annotations

import optuna
from test_bad_input import one_error_line

from hpo.spec.pin import PIN_KEY, pin_of
from hpo.spec.study_spec import load_spec


def _snapshot(url: str) -> tuple:
    study = optuna.load_study(study_name="small", storage=url)
    return study.user_attrs, [(t.number, t.state) for t in study.trials], [d.name for d in study.directions]


def _started(cli, write_spec, url, mnist_dir):
    spec = write_spec(epochs=1)
    assert cli("optimize", "--trials", 1, "--spec", spec, "--storage", url, "--data-dir", mnist_dir).exit_code == 0
    return spec


def test_a_new_study_stores_its_spec_with_a_hash_and_continues_with_the_same_one(
    cli, write_spec, sqlite_url, mnist_dir
) -> None:
    spec = _started(cli, write_spec, sqlite_url, mnist_dir)
    stored = optuna.load_study(study_name="small", storage=sqlite_url).user_attrs[PIN_KEY]
    assert stored == pin_of(load_spec(spec))
    assert stored["text"] == spec.read_text() and len(stored["hash"]) == 64
    assert (stored["directions"], stored["train"]["epochs"], stored["fixed"]["hidden"]) == (["maximize"], 1, 32)
    again = cli("optimize", "--trials", 2, "--spec", spec, "--storage", sqlite_url, "--data-dir", mnist_dir)
    assert again.exit_code == 0, again.stderr
    listed = cli("studies", "--storage", sqlite_url, env={"COLUMNS": "200"})
    assert f"small.toml {stored['hash'][:8]}" in listed.stdout, "hpo studies shows each study's spec"


def test_another_direction_fails_with_the_first_difference_and_writes_nothing(
    cli, write_spec, sqlite_url, mnist_dir, tmp_path
) -> None:
    spec = _started(cli, write_spec, sqlite_url, mnist_dir)
    other = tmp_path / "other.toml"
    other.write_text(spec.read_text().replace('direction = "maximize"', 'direction = "minimize"'))
    before = _snapshot(sqlite_url)
    line = one_error_line(
        cli(
            "optimize",
            "--trials",
            3,
            "--spec",
            other,
            "--study",
            "small",
            "--storage",
            sqlite_url,
            "--data-dir",
            mnist_dir,
        )
    )
    assert line == (
        "error: study 'small' was created with another spec (directions: the study has [\"maximize\"], this run "
        '["minimize"]); its trials would not be comparable: use --study NEW for a new study'
    )
    assert _snapshot(sqlite_url) == before


def test_other_training_settings_from_flags_are_refused(cli, write_spec, sqlite_url, mnist_dir) -> None:
    spec = _started(cli, write_spec, sqlite_url, mnist_dir)
    before = _snapshot(sqlite_url)
    line = one_error_line(
        cli("optimize", "--trials", 3, "--spec", spec, "--epochs", 4, "--storage", sqlite_url, "--data-dir", mnist_dir)
    )
    assert "train epochs: the study has 1, this run 4" in line and "--study NEW" in line
    line = one_error_line(
        cli("optimize", "--trials", 3, "--spec", spec, "--seed", 9, "--storage", sqlite_url, "--data-dir", mnist_dir)
    )
    assert "seed: the study has 0, this run 9" in line
    assert _snapshot(sqlite_url) == before


def test_a_changed_search_range_needs_the_explicit_flag(cli, write_spec, sqlite_url, mnist_dir, tmp_path) -> None:
    spec = _started(cli, write_spec, sqlite_url, mnist_dir)
    wider = tmp_path / "wider.toml"
    wider.write_text(
        spec.read_text().replace(
            "lr             = { low = 1e-4, high = 1e-2, log = true }", "lr = { low = 1e-5, high = 1e-2, log = true }"
        )
    )
    args = ["--trials", 2, "--spec", wider, "--storage", sqlite_url, "--data-dir", mnist_dir]
    line = one_error_line(cli("optimize", *args))
    assert "searched another space (space lr:" in line and "--allow-space-change" in line
    result = cli("optimize", *args, "--allow-space-change")
    assert result.exit_code == 0, result.stderr
    study = optuna.load_study(study_name="small", storage=sqlite_url)
    assert study.user_attrs[PIN_KEY]["space"]["lr"]["low"] == 1e-5, "the study now holds the space it searches"
    assert len(study.trials) == 2
