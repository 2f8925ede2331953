"""`hpo optimize --jobs auto` against `--jobs 1` (torch's threads): the same study, side by side.

Each run is the user's command as a whole process on a fresh SQLite store (default spec, same
seed, confirmation included unless --confirm 0), one after the other, alternating the two
settings for each repeat so that a change in the machine's load hits both alike. Reports
wall time, finished trials per minute (first trial's start to the target), pruned count and
best CV accuracy, and the ratios of auto to 1.

    python benchmarks/jobs.py --trials 30 --repeats 2          # the throughput target
    python benchmarks/jobs.py --trials 200 --repeats 1         # the README's main command
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import cpu_model  # noqa: E402


def run(jobs: str, trials: int, confirm: int, folder: Path, data_dir: str | None) -> dict[str, Any]:
    url = f"sqlite:///{folder / f'jobs-{jobs}.db'}"
    argv = [sys.executable, "-m", "hpo", "optimize", "--trials", str(trials), "--jobs", jobs, "--storage", url,
            "--confirm", str(confirm)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HPO_JOBS", None)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"hpo optimize --jobs {jobs} failed: {done.stderr[-2000:]}")
    study = optuna.load_study(study_name="twin", storage=url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    first = min(t.datetime_start for t in finished)
    last = max(t.datetime_complete for t in finished)
    search_min = (last - first).total_seconds() / 60
    return {
        "jobs": jobs,
        "wall_min": round(wall / 60, 2),
        "search_min": round(search_min, 2),
        "finished": len(finished),
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "trials_per_min": round(len(finished) / search_min, 2),
        "best_cv": round(study.best_value, 4),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--confirm", type=int, default=5, help="leaders confirmed at the end (part of the command's wall time)")
    ap.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = ("1", "auto") if repeat % 2 == 0 else ("auto", "1")
        for jobs in order:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append({"repeat": repeat, **run(jobs, args.trials, args.confirm, Path(tmp), args.data_dir)})
                print(json.dumps(runs[-1]), flush=True)
    med = {j: {k: statistics.median(r[k] for r in runs if r["jobs"] == j) for k in ("wall_min", "trials_per_min")} for j in ("1", "auto")}
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "trials": args.trials,
        "runs": runs,
        "throughput_ratio": round(med["auto"]["trials_per_min"] / med["1"]["trials_per_min"], 3),
        "wall_ratio": round(med["auto"]["wall_min"] / med["1"]["wall_min"], 3),
    }
    print("\n| jobs | wall (min) | search (min) | finished | pruned | trials/min | best CV |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        print(f"| {r['jobs']} | {r['wall_min']} | {r['search_min']} | {r['finished']} | {r['pruned']} | {r['trials_per_min']} | {r['best_cv']} |")
    print(f"\nauto / 1: {result['throughput_ratio']}x the trials per minute, {result['wall_ratio']}x the wall time (medians)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
