"""docker-compose.yml is right by construction: no engine runs here, so its services are checked as
data and its worker, MNIST and dashboard commands are run for real against the local PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SETTINGS = {"POSTGRES_PASSWORD": "s3cret-from-env"}
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        missing = name not in env or (op is not None and op.startswith(":") and env[name] == "")
        if op and op.endswith("?") and missing:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {**SETTINGS, **(env or {})})


def local_argv(command: list[str]) -> list[str]:
    """The container's command line, run with this checkout's interpreter."""
    if command[0] == "hpo":
        return [sys.executable, "-m", "hpo", *command[1:]]
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    return command


def test_compose_declares_db_worker_dashboard_and_a_one_shot_mnist_download() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"db", "mnist", "worker", "dashboard"}

    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volume = db["volumes"][0].split(":")[0]
    assert volume in spec["volumes"], "the database lives in a named volume"
    assert "ports" not in db, "the database is not published on the host"

    worker = services["worker"]
    assert worker["depends_on"]["db"]["condition"] == "service_healthy"
    assert worker["depends_on"]["mnist"]["condition"] == "service_completed_successfully"
    assert worker["restart"] == "on-failure"
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N needs both absent"
    assert worker["environment"]["HPO_THREADS"] == "1"
    assert worker["command"][:2] == ["hpo", "optimize"] and "200" in worker["command"]

    assert services["mnist"]["restart"] == "no"
    assert {v.split(":")[0] for v in services["mnist"]["volumes"]} == {v.split(":")[0] for v in worker["volumes"]}

    dashboard = services["dashboard"]
    assert dashboard["command"][0] == "optuna-dashboard"
    assert dashboard["ports"] and all(p.startswith("127.0.0.1:") for p in dashboard["ports"])
    assert dashboard["depends_on"]["db"]["condition"] == "service_healthy"
    for service in ("mnist", "worker", "dashboard"):
        assert services[service]["build"] == "." and (ROOT / "Dockerfile").exists()


def test_database_password_comes_only_from_the_environment() -> None:
    text = COMPOSE.read_text()
    for line in text.splitlines():
        if re.search(r"password", line, re.IGNORECASE) and not line.lstrip().startswith("#"):
            assert "${POSTGRES_PASSWORD" in line, f"password literal in docker-compose.yml: {line}"
    for url in re.findall(r"\w+(?:\+\w+)?://[^\s\"']+", text):
        credentials = url.split("://", 1)[1].split("@")[0] if "@" in url else ""
        assert ":" not in credentials or credentials.split(":", 1)[1].startswith("${"), url
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(yaml.safe_load(text), {})
    assert re.search(r"^POSTGRES_PASSWORD=$", (ROOT / ".env.example").read_text(), re.MULTILINE)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert compose()["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == SETTINGS["POSTGRES_PASSWORD"]


def test_image_installs_cpu_only_torch_before_the_package() -> None:
    steps = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    torch_step = next(i for i, line in enumerate(steps) if "download.pytorch.org/whl/cpu" in line)
    package_step = next(i for i, line in enumerate(steps) if "pip install ." in line)
    assert torch_step < package_step and "torch" in steps[torch_step]


def test_mnist_service_command_runs(mnist_dir) -> None:
    mnist = compose()["services"]["mnist"]
    env = {**os.environ, **mnist["environment"], "HPO_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        local_argv(mnist["command"]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_two_workers_run_the_compose_command_and_the_dashboard_serves_their_study(
    write_spec, postgres_url, mnist_dir
) -> None:
    spec_file = write_spec(epochs=2)
    services = compose({"TRIALS": "4", "HPO_SPEC": str(spec_file), "DASHBOARD_PORT": str(_free_port())})
    worker = services["services"]["worker"]
    compose_url = f"postgresql+psycopg://hpo:{SETTINGS['POSTGRES_PASSWORD']}@db:5432/hpo"
    assert worker["environment"]["HPO_STORAGE"] == compose_url
    env = {
        **os.environ,
        **worker["environment"],
        "HPO_STORAGE": postgres_url,
        "HPO_DATA_DIR": str(mnist_dir),
        "PYTHONPATH": str(ROOT),
        "HPO_CONNECT_TIMEOUT": "30",
    }
    procs = [
        subprocess.Popen(
            local_argv(worker["command"]), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    trials = optuna.load_study(study_name="small", storage=postgres_url).get_trials()
    assert 4 <= sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) <= 5

    dashboard = services["services"]["dashboard"]
    assert dashboard["command"][1] == compose_url
    argv = [postgres_url if a == compose_url else a for a in dashboard["command"]]
    port = dashboard["command"][dashboard["command"].index("--port") + 1]
    assert dashboard["ports"] == [f"127.0.0.1:{port}:{port}"]
    server = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        studies = _get_json(f"http://127.0.0.1:{port}/api/studies", server)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    (summary,) = studies["study_summaries"]
    assert summary["study_name"] == "small"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, server: subprocess.Popen, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dashboard exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"dashboard did not answer {url} within {timeout} s")
