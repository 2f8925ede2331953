"""The main command, `hpo optimize --trials N`, as a user runs it from an empty folder: its wall time and where it went.

Each run is the whole command as a process in a fresh folder with a fresh SQLite store (the
default spec unless --spec). From the trials' stored start and end times and user attributes it
reports where the wall time went: start-up (the command's start to its first trial's), the
search (first trial's start to the last trial's end), the end (the last trial's end to the
command's: the recommendation printed, the workers gone); trial-seconds
by configuration class (batch norm or not, channel widths, head), by state (complete, pruned,
failed) and by kernel choice; and how many epochs pruned trials ran. With --compare (a --jobs
value, e.g. 1) it alternates the two settings for each repeat, so that a change in the
machine's load hits both alike, and gives the ratios.

    python benchmarks/jobs.py --trials 200 --json benchmarks/results/jobs-200.json   # the main command
    python benchmarks/jobs.py --trials 30 --repeats 2 --compare 1             # --jobs auto against 1

With --store it runs nothing: it reads a study a user's command already ran (its SQLite file or
any SQLAlchemy URL), given when the command started and how long it took (`/usr/bin/time`'s
wall clock), and reports where that time went:

    python benchmarks/jobs.py --store /tmp/user/storage/hpo.db --started 2026-12-03T15:03:22 --wall 361
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import cpu_model

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def config_class(trial: FrozenTrial) -> str:
    """A trial's configuration class: batch norm or not, channel widths, head."""
    params = {**trial.user_attrs.get("fixed_params", {}), **trial.params}
    norm = "batch norm" if params.get("batch_norm") else "no batch norm"
    widths = f"{params.get('conv1_channels', '?')}/{params.get('conv2_channels', '?')}"
    return f"{norm}, {widths}, {params.get('head', '?')} head"


def _seconds(trial: FrozenTrial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _tally(groups: dict[str, list[FrozenTrial]], total: float) -> dict[str, dict[str, Any]]:
    """Per group: trials, trial-seconds, their share of all trial-seconds, mean seconds."""
    out = {}
    for name, trials in sorted(groups.items(), key=lambda kv: -sum(map(_seconds, kv[1]))):
        seconds = sum(map(_seconds, trials))
        out[name] = {
            "trials": len(trials),
            "trial_s": round(seconds, 1),
            "share": round(seconds / total, 3) if total else 0.0,
            "mean_s": round(seconds / len(trials), 2),
        }
    return out


def where_time_went(study: optuna.Study, started: datetime.datetime, ended: datetime.datetime) -> dict[str, Any]:
    """The command's wall time (started to ended, local time as Optuna stores it) split by phase,
    and its trials' seconds by configuration class, state and kernel choice."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state in STATES and t.datetime_complete is not None]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    total = sum(map(_seconds, done))
    by_class: dict[str, list[FrozenTrial]] = defaultdict(list)
    by_state: dict[str, list[FrozenTrial]] = defaultdict(list)
    by_class_state: dict[str, list[FrozenTrial]] = defaultdict(list)
    by_kernels: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in done:
        by_class[config_class(t)].append(t)
        by_state[STATES[t.state]].append(t)
        by_class_state[f"{config_class(t)}, {STATES[t.state]}"].append(t)
        by_kernels[t.user_attrs.get("kernels", "not recorded")].append(t)
    pruned_epochs = [max(t.intermediate_values, default=0) for t in by_state.get("pruned", [])]
    return {
        "wall_s": round((ended - started).total_seconds(), 1),
        "phases_s": {
            "start_up": round((first - started).total_seconds(), 1),
            "search": round((last - first).total_seconds(), 1),
            "end": round((ended - last).total_seconds(), 1),
        },
        "trial_s": round(total, 1),
        "by_class": _tally(by_class, total),
        "by_state": _tally(by_state, total),
        "by_class_and_state": _tally(by_class_state, total),
        "by_kernels": _tally(by_kernels, total),
        "pruned_epochs": {
            "mean": round(statistics.fmean(pruned_epochs), 2) if pruned_epochs else None,
            "histogram": {str(e): pruned_epochs.count(e) for e in sorted(set(pruned_epochs))},
        },
    }


def only_study(url: str) -> optuna.Study:
    """The study a single `hpo optimize` left in its store."""
    summaries = optuna.get_all_study_summaries(url)
    if not summaries:
        raise ValueError(f"no study in {url}")
    return optuna.load_study(study_name=summaries[0].study_name, storage=url)


def run(jobs: str, trials: int, folder: Path, data_dir: str | None, spec: str | None) -> dict[str, Any]:
    url = f"sqlite:///{folder / 'hpo.db'}"
    argv = [sys.executable, "-m", "hpo", "optimize", "--trials", str(trials), "--jobs", jobs, "--storage", url]
    argv += ["--data-dir", data_dir] if data_dir else []
    argv += ["--spec", spec] if spec else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HPO_JOBS", None)
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now()
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    ended = datetime.datetime.now()
    if done.returncode != 0:
        raise SystemExit(f"hpo optimize --jobs {jobs} failed: {done.stderr[-2000:]}")
    study = only_study(url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    search_min = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds() / 60
    return {
        "jobs": jobs,
        "wall_min": round(wall / 60, 2),
        "search_min": round(search_min, 2),
        "finished": len(finished),
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "trials_per_min": round(len(finished) / search_min, 2) if search_min else None,
        "best_cv": round(study.best_value, 4),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "where": where_time_went(study, started, ended),
    }


def where_stored(store: str, started: str, wall: float) -> dict[str, Any]:
    """`where_time_went` for a study a command already ran: `started` in local time (as Optuna
    stores trial times), `wall` the command's seconds."""
    study = only_study(store if "://" in store else f"sqlite:///{Path(store).resolve()}")
    begun = datetime.datetime.fromisoformat(started).replace(tzinfo=None)
    return where_time_went(study, begun, begun + datetime.timedelta(seconds=wall))


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| jobs | wall (min) | start-up (s) | search (min) | end (s) | finished | pruned | best CV |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        p = r["where"]["phases_s"]
        lines.append(
            f"| {r['jobs']} | {r['wall_min']} | {p['start_up']} | {r['search_min']} | {p['end']} | "
            f"{r['finished']} | {r['pruned']} | {r['best_cv']} |"
        )
    for r in runs:
        lines += [
            "",
            f"--jobs {r['jobs']}: trial-seconds by class and state",
            "| class | trials | s | share | mean s |",
        ]
        lines.append("| --- | --- | --- | --- | --- |")
        for name, g in r["where"]["by_class_and_state"].items():
            lines.append(f"| {name} | {g['trials']} | {g['trial_s']} | {g['share']:.0%} | {g['mean_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--jobs", default="auto", help="the command's --jobs [auto]")
    ap.add_argument("--compare", default=None, help="another --jobs value, run alternately beside it (e.g. 1)")
    ap.add_argument("--spec", default=None, help="the command's --spec [the default study]")
    ap.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--store", default=None, help="run nothing: where this stored study's time went")
    ap.add_argument("--started", default=None, help="with --store: when the command started (ISO, local time)")
    ap.add_argument("--wall", type=float, default=None, help="with --store: the command's wall seconds")
    args = ap.parse_args(argv)
    if args.store is not None:
        if args.started is None or args.wall is None:
            ap.error("--store needs --started and --wall")
        if "://" not in args.store and not Path(args.store).is_file():
            ap.error(f"--store {args.store}: no such file")
        try:
            where = where_stored(args.store, args.started, args.wall)
        except ValueError as exc:  # no study in the store, or --started not an ISO time
            ap.error(str(exc))
        print(json.dumps(where, indent=2))
        if args.json:
            args.json.write_text(json.dumps(where, indent=2) + "\n")
        return where
    if args.data_dir:  # the command runs in a temporary folder, where a relative path means nothing
        args.data_dir = str(Path(args.data_dir).resolve())
    settings = (args.jobs,) if args.compare is None else (args.jobs, args.compare)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for jobs in settings if repeat % 2 == 0 else settings[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append({"repeat": repeat, **run(jobs, args.trials, Path(tmp), args.data_dir, args.spec)})
                print(json.dumps(runs[-1]), flush=True)
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "trials": args.trials,
        "runs": runs,
    }
    if args.compare is not None:
        med = {j: statistics.median(r["wall_min"] for r in runs if r["jobs"] == j) for j in settings}
        result["wall_ratio"] = round(med[args.jobs] / med[args.compare], 3)
    print("\n" + table(runs))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
