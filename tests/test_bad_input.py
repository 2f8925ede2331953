"""Every bad input ends in one line on stderr, exit status 2, and nothing written to storage."""

import re
from pathlib import Path

import pytest
from torchvision.datasets import MNIST


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


CASES = {
    "trials below one": (["--trials", "0"], "--trials must be at least 1"),
    "one fold": (["--folds", "1"], "folds must be between 2"),
    "more folds than pairs": (["--folds", "201"], "folds must be between 2 and train_pairs \\(200\\)"),
    "unknown sampler": (["--sampler", "cmaes-ish"], "unknown sampler 'cmaes-ish'"),
    "unknown pruner": (["--pruner", "fast"], "unknown pruner 'fast'"),
    "unparseable storage": (["--storage", "not a url"], "cannot parse storage URL"),
    "unknown storage driver": (["--storage", "nosuchdb://x/y"], "unknown database driver 'nosuchdb'"),
    "bad device": (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    "zero epochs": (["--epochs", "0"], "epochs must be at least 1"),
}


@pytest.mark.parametrize("args,message", CASES.values(), ids=CASES.keys())
def test_bad_flags_fail_early_and_write_nothing(cli, write_spec, tmp_path, mnist_dir, args, message) -> None:
    db = tmp_path / "never.db"
    base = ["optimize", "--spec", write_spec(), "--data-dir", mnist_dir]
    if "--storage" not in args:
        base += ["--storage", f"sqlite:///{db}"]
    line = one_error_line(cli(*base, *args))
    assert line.startswith("error: ")
    assert re.search(message, line), line
    assert not db.exists()


SPEC_CASES = {
    "missing spec": (None, "not found"),
    "malformed TOML": ("[study\nname='x'", "not valid TOML"),
    "unknown parameter": ("[study]\nname='x'\n[space]\nmomentum = 0.9\n", "unknown parameter 'momentum'"),
    "unknown key": ("[study]\nname='x'\n[train]\nepoch = 3\n", "unknown \\[train\\] keys: epoch"),
    "low above high": ("[study]\nname='x'\n[space]\nlr = {low = 0.1, high = 0.01}\n", "must be below high"),
    "log range at zero": (
        "[study]\nname='x'\n[space]\nweight_decay = {low = 0.0, high = 0.1, log = true}\n",
        "needs low > 0",
    ),
    "empty choices": ("[study]\nname='x'\n[space]\nbatch_norm = {choices = []}\n", "non-empty list"),
}


@pytest.mark.parametrize("text,message", SPEC_CASES.values(), ids=SPEC_CASES.keys())
def test_bad_spec_files_fail_with_one_line(cli, tmp_path, mnist_dir, text, message) -> None:
    spec = tmp_path / "spec.toml"
    if text is not None:
        spec.write_text(text)
    db = tmp_path / "never.db"
    line = one_error_line(cli("optimize", "--spec", spec, "--data-dir", mnist_dir, "--storage", f"sqlite:///{db}"))
    assert re.search(message, line), line
    assert not db.exists()


def test_absent_mnist_that_cannot_be_downloaded_names_data_dir(cli, write_spec, tmp_path, monkeypatch) -> None:
    # A real download attempt against a closed local port: what a machine without internet sees.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    db = tmp_path / "never.db"
    empty = tmp_path / "no-mnist-here"
    line = one_error_line(cli("optimize", "--spec", write_spec(), "--data-dir", empty, "--storage", f"sqlite:///{db}"))
    assert "--data-dir" in line and str(empty) in line
    assert not db.exists()


def test_unreachable_storage_is_one_line(cli, write_spec, tmp_path, mnist_dir) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    url = f"sqlite:///{blocker}/sub/x.db"  # a folder cannot be made inside a file
    result = cli("optimize", "--spec", write_spec(), "--data-dir", mnist_dir, "--storage", url)
    line = one_error_line(result)
    assert "storage" in line


def test_studies_with_bad_storage_url_is_one_line(cli) -> None:
    assert "cannot parse storage URL" in one_error_line(cli("studies", "--storage", "::"))


def test_studies_on_a_missing_sqlite_file_is_one_line_and_creates_nothing(cli, tmp_path) -> None:
    db = tmp_path / "typo.db"
    assert "no study store" in one_error_line(cli("studies", "--storage", f"sqlite:///{db}"))
    assert not db.exists()


def _truncated_mnist(tmp_path, mnist_dir):
    raw = tmp_path / "truncated" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (mnist_dir / "MNIST" / "raw").glob("*-ubyte"):
        (raw / source.name).write_bytes(source.read_bytes()[:50_000])
    return raw.parents[1]


def _a_file(tmp_path, mnist_dir):
    path = tmp_path / "mnist.tar"
    path.write_text("not a folder")
    return path


DATA_CASES = {
    "train_pairs above the split": (None, 100_000, "lower \\[train\\] train_pairs"),
    "data dir is a file": (_a_file, 200, "--data-dir '.*mnist.tar' is a file"),
    "truncated MNIST": (_truncated_mnist, 200, "--data-dir"),
}


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("make_dir,train_pairs,message", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_bad_data_is_refused_before_the_pool_starts_or_the_study_exists(
    cli, write_spec, tmp_path, mnist_dir, jobs, make_dir, train_pairs, message
) -> None:
    spec = write_spec()
    spec.write_text(spec.read_text().replace("train_pairs = 200", f"train_pairs = {train_pairs}"))
    data_dir = make_dir(tmp_path, Path(mnist_dir)) if make_dir else mnist_dir
    db = tmp_path / "never.db"
    line = one_error_line(
        cli("optimize", "--spec", spec, "--data-dir", data_dir, "--storage", f"sqlite:///{db}", "--jobs", jobs)
    )
    assert re.search(message, line), line
    assert not db.exists()


def test_an_unknown_ensemble_mode_fails_before_the_study_is_read(cli, tmp_path) -> None:
    db = tmp_path / "never.db"
    args = ["evaluate", "--study", "twin", "--ensemble", "5", "--ensemble-mode", "mean"]
    line = one_error_line(cli(*args, "--storage", f"sqlite:///{db}"))
    assert line == "error: unknown ensemble mode 'mean'; choose one of weighted, retrain, seeds"
    assert not db.exists()
