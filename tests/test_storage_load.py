"""The storage load benchmark's quick mode runs for real: simulated workers (no torch) on the local
PostgreSQL and on one SQLite file, with the invariants read back from the study. No timings are asserted."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import storage_load  # noqa: E402


@pytest.mark.postgres
def test_quick_load_keeps_every_trial_once_and_reports_latencies_and_connections(
    postgres_server, tmp_path, capsys
) -> None:
    server = postgres_server.render_as_string(hide_password=False)
    result = storage_load.main(["--quick", "--server", server, "--json", str(tmp_path / "load.json")])
    assert json.loads((tmp_path / "load.json").read_text()) == json.loads(json.dumps(result))
    runs = {(r["backend"], r["workers"]): r for r in result["runs"]}
    assert set(runs) == {("postgresql", 4), ("sqlite", 2)}
    for run in runs.values():
        assert run["ready"] == run["workers"] and not run["timed_out"] and run["worker_errors"] == []
        assert run["finished"] >= run["target"], "workers stop at the study's target, not before"
        assert run["duplicate_numbers"] == run["lost"] == run["running_left"] == 0
        assert run["torch_imported"] is False
        for op in ("ask", "report", "tell"):
            assert run[f"{op}_ms"]["n"] > 0 and 0 < run[f"{op}_ms"]["p50"] <= run[f"{op}_ms"]["p99"]
        assert run["storage_main_ms_per_trial"] > 0
    postgres = runs[("postgresql", 4)]
    assert 4 <= postgres["peak_connections"] <= 2 * 4, (
        "one connection per worker, a second only while a heartbeat overlaps"
    )
    assert runs[("sqlite", 2)]["peak_connections"] is None and runs[("sqlite", 2)]["database_is_locked"] == 0
    table = capsys.readouterr().out
    assert "| postgresql | 4 |" in table and "| sqlite | 2 |" in table
