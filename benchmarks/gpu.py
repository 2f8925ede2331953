"""The GPU run, in one call of at most 8 minutes: per-trial times and a study on CUDA, as JSON.

    bash benchmarks/gpu.sh                          # the whole run (it calls this script)
    python benchmarks/gpu.py --out gpu.json --trials 50

Parts, each written to --out as soon as it ends (a run cut short keeps what it measured):
- `trials`: the reference trial (bench.REFERENCE: no batch norm, MLP head) and the default
  study's most common trial (bench.COMMON: batch norm, 32/64 channels, compare head) through
  hpo's objective on CUDA, full size (5 folds x 800 pairs, 25 epochs): the first run apart
  (CUDA's and cuDNN's start-up), then the median of --repeats, and the kernels each recorded
  (the dispatch declines the CPU kernels on CUDA: torch+torch).
- `study`: `hpo optimize --trials N --device cuda --jobs auto` (one worker per GPU) from an empty
  folder, then (time left) the same with two workers per GPU: wall time, trials, pruned.
Every check that needs no GPU (the arguments, the data, the output folder) runs first, so a
mistake shows on any machine; then it stops with status 3 where torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import optuna
import torch
from bench import FULL, REFERENCES, environment, reference_spec, study_stats

from hpo.pool import cuda_devices
from hpo.search.objective import Objective
from hpo.training.data import cv_pairs, resolve_data_dir

NO_CUDA = 3  # the exit status without a CUDA device


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json", help="the JSON written")
    ap.add_argument("--trials", type=int, default=50, help="the study's trials [50]")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each reference trial [3]")
    ap.add_argument("--budget", type=float, default=450, help="seconds the run may take before it skips parts [450]")
    ap.add_argument("--data-dir", type=Path, default=None, help="MNIST folder [$HPO_DATA_DIR, else data]")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.repeats < 1:
        ap.error(f"--trials and --repeats must be at least 1; got {args.trials} and {args.repeats}")
    if args.budget <= 0:
        ap.error(f"--budget must be positive; got {args.budget}")
    args.data_dir = resolve_data_dir(args.data_dir).resolve()  # the study part runs in a scratch folder
    if not any(args.data_dir.rglob("train-images-idx3-ubyte*")):
        ap.error(f"no MNIST under {args.data_dir} (run `hpo download` or set HPO_DATA_DIR)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return args


def trials_part(data_dir: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, params in REFERENCES.items():
        spec = reference_spec(FULL, params)
        pairs = cv_pairs(data_dir, FULL.pairs, spec.seed, download=False)
        objective = Objective(spec, pairs, torch.device("cuda"))
        times, accuracies, kernels = [], [], set()
        for run in range(repeats + 1):  # run 0: CUDA's and cuDNN's start-up, reported apart
            seeded = Objective(replace(spec, seed=spec.seed + run), pairs, torch.device("cuda"))
            fixed = optuna.trial.FixedTrial(params)
            torch.cuda.synchronize()
            start = time.perf_counter()
            accuracies.append(seeded(fixed))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            kernels.add(fixed.user_attrs["kernels"])
        del objective
        out[name] = {
            "params": params,
            "first_s": times[0],
            "median_s": statistics.median(times[1:]),
            "runs_s": times[1:],
            "cv_accuracy": statistics.fmean(accuracies[1:]),
            "kernels": sorted(kernels),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def study_part(data_dir: Path, trials: int, jobs: str) -> dict[str, Any]:
    """`hpo optimize` from an empty folder: the command's wall time and the study's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/gpu.db"
        argv = [sys.executable, "-m", "hpo", "optimize", "--trials", str(trials), "--device", "cuda", "--jobs", jobs]
        argv += ["--storage", url, "--study", "gpu", "--data-dir", str(data_dir)]
        start = time.perf_counter()
        subprocess.run(argv, cwd=tmp, check=True, stdout=subprocess.DEVNULL, env=None)
        wall = time.perf_counter() - start
        return {"jobs": jobs, "wall_s": wall, **study_stats(url, "gpu")}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    gpus = cuda_devices("cuda")
    if not gpus:
        print("benchmarks/gpu.py: torch sees no CUDA device; run it on a machine with one", file=sys.stderr)
        return NO_CUDA
    result: dict[str, Any] = {
        "environment": environment([torch.get_num_threads()]),
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "budget_s": args.budget,
    }

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    result["trials"] = trials_part(args.data_dir, args.repeats)
    save()
    result["study"] = [study_part(args.data_dir, args.trials, "auto")]
    save()
    took = result["study"][0]["wall_s"]
    if time.perf_counter() - started + took * 1.2 < args.budget:  # two workers per GPU, if it fits
        result["study"].append(study_part(args.data_dir, args.trials, str(2 * gpus)))
    else:
        result["skipped"] = f"two workers per GPU: {took:.0f} s would pass the {args.budget:.0f} s budget"
    result["wall_s"] = time.perf_counter() - started
    save()
    print(json.dumps(result["study"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
