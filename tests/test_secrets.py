"""No command prints, logs or writes a storage URL's password (a log collector would keep it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Sup3rSecretPw"


def with_password(url: str) -> str:
    """The same database behind a URL that carries a password (trust auth ignores it, the output must too)."""
    return sqlalchemy.make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_command_shows_the_storage_password(cli, write_spec, postgres_url, mnist_dir, tmp_path) -> None:
    url = with_password(postgres_url)
    spec = write_spec(pruner="none", epochs=1)
    seen: list[str] = []

    def run(*args: object, code: int = 0) -> None:
        result = cli(*args, env={"COLUMNS": "300"})  # a title is not wrapped, or cut where the password was
        seen.extend([result.stdout, result.stderr])
        assert result.exit_code == code, (args, result.stdout, result.stderr)

    run("optimize", "--trials", 2, "--spec", spec, "--storage", url, "--data-dir", mnist_dir)
    run("studies", "--storage", url)
    assert "studies in postgresql+psycopg://postgres:***@" in seen[-2]
    run("export", "--study", "small", "--storage", url, "--format", "json")
    run("report", "--study", "small", "--storage", url, "--out", tmp_path / "r.html")
    seen.append((tmp_path / "r.html").read_text())
    run("evaluate", "--study", "small", "--storage", url, "--data-dir", mnist_dir, "--rounds", 1, "--pairs", 100)
    # the errors that name a store
    run("export", "--study", "nosuch", "--storage", url, code=2)
    run("studies", "--storage", url.replace("postgresql+psycopg", "no such db"), code=2)
    run("studies", "--storage", url.replace("postgresql+psycopg", "nosuchdb"), code=2)
    unreachable = sqlalchemy.make_url(url).set(port=free_port()).render_as_string(hide_password=False)
    run("optimize", "--spec", spec, "--storage", unreachable, "--data-dir", mnist_dir, "--connect-timeout", 0, code=2)
    assert any("***" in text for text in seen[-6:]), "the error lines name the store, masked"

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        first = dashboard.stdout.readline()
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    assert "optuna-dashboard on postgresql+psycopg://postgres:***@" in first, first
    seen.append(first)
    leaked = [text for text in seen if SECRET in text]
    assert not leaked, leaked
