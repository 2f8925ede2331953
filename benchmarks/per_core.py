"""The whole machine as hpo uses it by default: one reference trial per core at once.

    python benchmarks/per_core.py                 # one trial per core, 3 rounds (about a minute)
    python benchmarks/per_core.py --quick         # tiny (the suite's smoke test)

`hpo optimize --jobs auto` runs one worker process per core, each on one torch thread. This
starts that many processes, each loading the data and building the reference trial's
objective (bench.REFERENCE, as bench.py's `trial` part), waits until all are ready, then lets
them train at the same moment; each reports its trial's seconds. The machine's rate is
cores x the trial's FLOPs (the direct convolution's count, as bench.py) over the slowest
process's seconds, against the GEMM peak at all cores measured in the same run (bench.py's
`peak`). bench.py's `trial` part measures one trial at a time, on one thread and on all.
Medians of `--repeats` rounds; JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import FULL, QUICK, REFERENCE, cpu_model, gemm_peak, median_of, reference_flops, reference_spec

from hpo.search.objective import Objective
from hpo.training.cv import study_folds
from hpo.training.data import cv_pairs, resolve_data_dir


def child(quick: bool, seed_offset: int) -> None:
    """One process's side: build the trial, say ready, wait for the go line, train, report."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sizes = QUICK if quick else FULL
    base = reference_spec(sizes)
    spec = replace(base, seed=base.seed + seed_offset)
    pairs = cv_pairs(resolve_data_dir(None), sizes.pairs, base.seed, download=False)
    objective = Objective(spec, pairs, torch.device("cpu"))
    warm_up = Objective(replace(spec, train=replace(spec.train, epochs=1)), pairs, torch.device("cpu"))
    warm_up(optuna.trial.FixedTrial(REFERENCE))  # numba's and oneDNN's first-use costs, paid once per worker
    print("ready", flush=True)
    sys.stdin.readline()
    seconds, _, accuracy = median_of(1, lambda: objective(optuna.trial.FixedTrial(REFERENCE)))
    print(json.dumps({"seconds": seconds, "accuracy": accuracy}), flush=True)


def one_round(processes: int, quick: bool, round_: int) -> list[dict[str, float]]:
    """`processes` trials trained at the same moment, each in its own process on one thread."""
    argv = [sys.executable, __file__, "--child", str(round_ * processes)]
    procs = []
    for p in range(processes):
        argv[-1] = str(round_ * processes + p)
        procs.append(
            subprocess.Popen(
                argv + (["--quick"] if quick else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a trial process failed before training (exit {proc.wait()})")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a trial process failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="trials at once [one per core: %(default)s]"
    )
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians reported")
    ap.add_argument("--quick", action="store_true", help="one tiny round")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one trial process: its seed offset
    args = ap.parse_args(argv)
    if args.child is not None:
        child(args.quick, int(args.child))
        return {}
    sizes = QUICK if args.quick else FULL
    rounds = [one_round(args.processes, args.quick, r) for r in range(1 if args.quick else args.repeats)]
    spec = reference_spec(sizes)
    folds = study_folds(
        cv_pairs(resolve_data_dir(None), sizes.pairs, spec.seed, download=False), spec.train.folds, spec.seed
    )
    flops = reference_flops(spec, folds)
    torch.set_num_threads(args.processes)
    peak = gemm_peak(torch.float32, 1 if args.quick else args.repeats)
    slowest = [max(r["seconds"] for r in trials) for trials in rounds]
    rate = args.processes * flops["trial_gflop"] / statistics.median(slowest)
    result = {
        "cpu": cpu_model(),
        "processes": args.processes,
        "quick": args.quick,
        "trial_gflop": flops["trial_gflop"],
        "rounds_s": [[r["seconds"] for r in trials] for trials in rounds],
        "cv_accuracies": [[r["accuracy"] for r in trials] for trials in rounds],
        "slowest_s": statistics.median(slowest),
        "machine_gflops": rate,
        "peak_gflops_all_cores": peak,
        "fraction_of_peak": rate / peak,
    }
    print(
        f"| {args.processes} trials at once, one per process on one thread: slowest (s, median of {len(rounds)}) "
        f"| {result['slowest_s']:.1f} |"
    )
    print(
        f"| the machine's rate (GFLOP/s, direct count) / GEMM peak at {args.processes} threads | {rate:.1f} / "
        f"{peak:.0f} = {rate / peak:.0%} |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
