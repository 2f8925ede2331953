"""What should `hpo evaluate --ensemble K` train? Its modes, paired on one study's rounds.

Greedy selection picks K trials with replacement. `weighted` trains a trial picked w times once
and counts it w times; `retrain` trains it w times from different seeds; `seeds` skips selection
and trains the recommended trial K times. Every network is a (trial, copy) whose seeds are its
own, so it trains the same in any ensemble: each is trained once here and serves every mode that
holds it, and all modes are tested on the same rounds. Prints each mode's test accuracy, the
networks it trains and its per-round difference from `weighted`; writes JSON.

    python benchmarks/ensemble_modes.py --storage sqlite:///storage/hpo.db --study twin --k 5 \\
        --rounds 10 --threads 2 --out benchmarks/results/ensemble-modes-seed1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from paired import differences

from hpo.app.ensemble import ENSEMBLE_MODES, members_for, picks_for
from hpo.readers.results import DEFAULT_RULE, load_existing_study
from hpo.store.connect import DEFAULT_STORAGE


def run(
    storage: str,
    study_name: str,
    k: int,
    rounds: int,
    seed: int,
    epochs: int | None,
    threads: int | None,
    data_dir: Path | None = None,
    pairs: int = 1000,
) -> dict[str, Any]:
    """Every mode's ensemble of `study_name` tested on the same `rounds` rounds of `seed`."""
    import torch

    from hpo.training.data import resolve_data_dir
    from hpo.training.ensemble import combine, train_member
    from hpo.training.rounds import round_pairs

    if threads:
        torch.set_num_threads(threads)
    study = load_existing_study(storage, study_name)
    members = {}
    for mode in ENSEMBLE_MODES:
        picks, scored = picks_for(study, k, mode, DEFAULT_RULE)
        members[mode] = (picks, scored, members_for(study, picks, mode, epochs))
    data = round_pairs(resolve_data_dir(data_dir), rounds, pairs, seed)
    trained: dict[tuple[int, int], Any] = {}
    seconds: dict[tuple[int, int], float] = {}
    for _, _, ms in members.values():
        for m in ms:
            if (m.trial, m.copy) not in trained:
                start = time.perf_counter()
                trained[m.trial, m.copy] = train_member(m, data, seed)
                seconds[m.trial, m.copy] = time.perf_counter() - start
                print(f"trained #{m.trial} copy {m.copy}: {100 * trained[m.trial, m.copy].alone.mean:.2f}", flush=True)
    out: dict[str, Any] = {"study": study_name, "k": k, "rounds": rounds, "seed": seed, "modes": {}}
    for mode, (picks, scored, ms) in members.items():
        networks = [_weighted(trained[m.trial, m.copy], m.weight) for m in ms]
        evaluation = combine(networks, data, seed, sum(seconds[m.trial, m.copy] for m in ms))
        out["modes"][mode] = {
            "picks": picks,
            **scored,
            "networks": [[m.trial, m.copy, m.weight] for m in ms],
            "accuracies": evaluation.accuracies,
            "mean": evaluation.mean,
            "std": evaluation.std,
            "train_seconds": evaluation.seconds,
            "alone": {f"#{m.trial}/{m.copy}": trained[m.trial, m.copy].alone.mean for m in ms},
        }
    return out


def _weighted(trained: Any, weight: int) -> Any:
    """A trained network counted `weight` times (the same network serves modes that weigh it apart)."""
    return replace(trained, member=replace(trained.member, weight=weight))


def table(result: dict[str, Any]) -> str:
    base = result["modes"]["weighted"]["accuracies"]
    lines = [
        "| mode | networks trained | test % | difference from weighted (points) | train s |",
        "|---|---|---:|---:|---:|",
    ]
    for mode, r in result["modes"].items():
        nets = ", ".join(f"#{t}/{c}" + (f" x{w}" if w > 1 else "") for t, c, w in r["networks"])
        diff, se = differences(base, r["accuracies"])
        shown = "" if mode == "weighted" else f"{diff:+.2f} ± {se:.2f}"
        row = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
        lines.append(f"| {mode} | {nets} | {row} | {shown} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--study", default="twin")
    parser.add_argument("--k", type=int, default=5, help="ensemble size (networks, counting repeats)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (hpo evaluate --seed)")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None, help="default: each trial's final_epochs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    result = run(
        args.storage, args.study, args.k, args.rounds, args.seed, args.epochs, args.threads, args.data_dir, args.pairs
    )
    print(table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
