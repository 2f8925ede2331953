"""benchmarks/chaos.py --quick: workers under kills, stops, terminated connections, restarts and a skewed clock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    reason="starts a private PostgreSQL server as user postgres: needs root and the server's binaries",
)
def test_every_trial_is_accounted_for_under_a_quick_fault_schedule(tmp_path, mnist_dir) -> None:
    out = tmp_path / "chaos.json"
    env = {**os.environ, "HPO_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--quick", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["checks"] and all(result["checks"].values()), run.stdout[-3000:]
    assert run.returncode == 0
    assert result["faults"]["kill"] >= 1 and result["faults"]["restart"] == 2
    assert {"sigstop", "terminate", "server down"} <= set(result["faults"])
    assert result["finished"] == result["target"] and result["running"] == 0
