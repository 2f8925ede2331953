"""evaluate / report / export / dashboard: bad input is one line, exit status 2, nothing written."""

import re
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_bad_input import one_error_line


@pytest.fixture
def study_copy(small_study, tmp_path) -> tuple[str, str]:
    """A private copy of the small study, with one pruned and one failed trial added by ask/tell."""
    url, name = small_study
    src = Path(url.removeprefix("sqlite:///"))
    dst = tmp_path / "copy.db"
    # The backup API, not a file copy: recent commits of a live WAL database sit in its side file.
    with closing(sqlite3.connect(src)) as live, closing(sqlite3.connect(dst)) as copy:
        live.backup(copy)
    copy_url = f"sqlite:///{dst}"
    study = optuna.load_study(study_name=name, storage=copy_url)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    return copy_url, name


def snapshot(url: str, name: str) -> tuple:
    study = optuna.load_study(study_name=name, storage=url)
    return study.user_attrs, [(t.number, t.state, t.user_attrs) for t in study.trials]


EVALUATE_CASES = {
    "unknown study": (["--study", "nope"], "no study 'nope' in .* \\(studies there: small\\)"),
    "trial not in study": (["--study", "small", "--trial", "99"], "has no trial #99 \\(trials are #0..#4\\)"),
    "pruned trial": (["--study", "small", "--trial", "3"], "trial #3 of study 'small' is PRUNED; only complete"),
    "failed trial": (["--study", "small", "--trial", "4"], "trial #4 of study 'small' is FAIL"),
    "neither study nor spec": ([], "give either --study NAME"),
    "zero rounds": (["--study", "small", "--rounds", "0"], "--rounds must be at least 1"),
    "trial without study": (["--trial", "1", "--spec", "x.toml"], "--trial needs --study"),
}


@pytest.mark.parametrize("args,message", EVALUATE_CASES.values(), ids=EVALUATE_CASES.keys())
def test_bad_evaluate_requests_fail_plainly_and_leave_the_study_alone(
    cli, study_copy, mnist_dir, args, message
) -> None:
    url, name = study_copy
    before = snapshot(url, name)
    line = one_error_line(cli("evaluate", "--storage", url, "--data-dir", mnist_dir, *args))
    assert line.startswith("error: ")
    assert re.search(message, line), line
    assert snapshot(url, name) == before


def test_a_spec_with_unfixed_parameters_cannot_be_evaluated(cli, write_spec, mnist_dir, tmp_path) -> None:
    line = one_error_line(cli("evaluate", "--spec", write_spec(), "--data-dir", mnist_dir))
    assert "leaves weight_sharing, aux_weight, dropout, batch_norm, lr, beta1, weight_decay to the search" in line


def test_a_missing_sqlite_store_is_reported_not_created(cli, tmp_path) -> None:
    db = tmp_path / "typo.db"
    for args in (
        ["evaluate", "--study", "x"],
        ["report", "--study", "x", "--out", tmp_path / "r.html"],
        ["export", "--study", "x"],
    ):
        line = one_error_line(cli(*args, "--storage", f"sqlite:///{db}"))
        assert "no study store at" in line
    assert not db.exists() and not (tmp_path / "r.html").exists()


OUT_CASES = {
    "folder missing": ("missing/dir/out.{ext}", "folder '.*missing/dir' does not exist"),
    "parent is a file": ("afile/out.{ext}", "folder '.*afile' does not exist"),
    "out is a folder": (".", "is a folder"),
}


@pytest.mark.parametrize("command,ext", [("report", "html"), ("export", "csv")])
@pytest.mark.parametrize("out,message", OUT_CASES.values(), ids=OUT_CASES.keys())
def test_unwritable_out_fails_before_any_work(cli, small_study, tmp_path, command, ext, out, message) -> None:
    url, name = small_study
    (tmp_path / "afile").write_text("")
    target = tmp_path / out.format(ext=ext)
    line = one_error_line(cli(command, "--study", name, "--storage", url, "--out", target))
    assert re.search(message, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_export_rejects_an_unknown_format(cli, small_study) -> None:
    url, name = small_study
    assert "--format must be csv or json" in one_error_line(
        cli("export", "--study", name, "--storage", url, "--format", "xml")
    )


def test_dashboard_on_a_port_in_use_says_so(small_study) -> None:
    url, _ = small_study
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "hpo", "dashboard", "--storage", url, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


@pytest.mark.parametrize("command", ["evaluate", "report", "export", "dashboard"])
def test_result_commands_have_help(cli, command) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout and "--storage" in result.stdout


def test_top_level_help_lists_the_search_before_the_commands_that_read_it(cli) -> None:
    result = cli("--help")
    names = ["optimize", "evaluate", "specs", "studies", "report", "export", "dashboard"]
    at = {name: result.stdout.find(f" {name} ") for name in names}
    assert result.exit_code == 0 and all(i >= 0 for i in at.values()), result.stdout
    assert at["optimize"] < at["evaluate"] < min(at[name] for name in names[2:]), result.stdout
