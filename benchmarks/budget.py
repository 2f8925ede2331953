"""What a shorter budget would have recommended: a finished study read as if it had stopped early.

For each N, the study's first N finished trials (by completion time, the order a stopped study
would hold them in) give the best-CV pick and the moment it was known (seconds from the first
trial's start). With --rounds, each distinct pick is tested with `hpo evaluate`'s rounds
(app.evaluate, the command's code path). A replay, not a rerun: the sampler saw all trials
before each one, as a study stopped at N would have too, so the prefix is what that study held.
With --patience, also the first N at which `hpo optimize --patience P` would have stopped.

    python benchmarks/budget.py --storage sqlite:///storage/hpo.db --study twin --sizes 50 100 150 200 \
        --patience 30 50 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import app
from hpo.search.loop import FINISHED
from hpo.search.stopping import plateau


def prefix_picks(trials: list[FrozenTrial], sizes: list[int]) -> list[dict[str, Any]]:
    """The best-CV complete trial among the first N finished, for each N the study reached."""
    done = _in_finishing_order(trials)
    return [pick for n in sorted(set(sizes)) if (pick := _pick(trials, done, n)) is not None]


def patience_picks(trials: list[FrozenTrial], patiences: list[int]) -> list[dict[str, Any]]:
    """Where `hpo optimize --patience P` would have stopped this study, and what it would have picked.

    The first N at which the rule (hpo.search.stopping) holds for the first N finished trials:
    the moment a worker checking before each ask would have stopped asking.
    """
    done = _in_finishing_order(trials)
    picks = []
    for patience in sorted(set(patiences)):
        n = next((n for n in range(1, len(done) + 1) if plateau(done[:n], patience) is not None), None)
        pick = _pick(trials, done, n) if n is not None else None
        if pick is not None:
            picks.append({"patience": patience, **pick})
    return picks


def _in_finishing_order(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return sorted((t for t in trials if t.state in FINISHED), key=lambda t: t.datetime_complete)


def _pick(trials: list[FrozenTrial], done: list[FrozenTrial], n: int) -> dict[str, Any] | None:
    complete = [t for t in done[:n] if t.state == TrialState.COMPLETE]
    if n > len(done) or not complete:
        return None
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    best = max(complete, key=lambda t: t.value)
    return {
        "finished": n,
        "trial": best.number,
        "cv": best.value,
        "known_at_s": round((done[n - 1].datetime_complete - start).total_seconds(), 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, help="the finished study's store")
    ap.add_argument("--study", default="twin")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 150, 200], help="budgets N to replay")
    ap.add_argument("--patience", type=int, nargs="*", default=[], help="also where --patience P would have stopped")
    ap.add_argument("--rounds", type=int, default=0, help="test each pick with this many rounds (0: no test)")
    ap.add_argument("--seed", type=int, default=0, help="the rounds' seed (hpo evaluate's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    trials = study.get_trials(deepcopy=False)
    picks = prefix_picks(trials, args.sizes) + patience_picks(trials, args.patience)
    tested: dict[int, Any] = {}
    for pick in picks:
        if args.rounds and pick["trial"] not in tested:
            options = app.EvaluateOptions(
                study=args.study, trial=pick["trial"], storage=args.storage, rounds=args.rounds, seed=args.seed
            )
            tested[pick["trial"]] = app.evaluate(options).evaluation
        if pick["trial"] in tested:
            pick["test_mean"], pick["test_std"] = tested[pick["trial"]].mean, tested[pick["trial"]].std
    print("| stopped by | finished trials | pick | CV | known at (s) | test accuracy % |")
    print("|---|---:|---:|---:|---:|---:|")
    for p in picks:
        test = f"{100 * p['test_mean']:.2f} ± {100 * p['test_std']:.2f}" if "test_mean" in p else ""
        rule = f"--patience {p['patience']}" if "patience" in p else "--trials"
        print(f"| {rule} | {p['finished']} | #{p['trial']} | {p['cv']:.4f} | {p['known_at_s']:.0f} | {test} |")
    if args.json:
        args.json.write_text(json.dumps({"argv": argv or sys.argv[1:], "picks": picks}, indent=1))
    return picks


if __name__ == "__main__":
    main()
