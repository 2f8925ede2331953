"""The Winograd transforms inside training against the same calls on warm arrays.

    python benchmarks/tile_transforms.py                 # 5 epochs of the common trial, 1 thread
    python benchmarks/tile_transforms.py --quick         # 1 epoch (the suite's smoke test)

The second convolution's six tile transforms (hpo/kernels/winograd_tiles.py) are timed around
every call while the default study's most common trial trains (batch norm, compare head,
16/64 channels, the default spec's folds and pairs; `--conv1 32` for the wider one). Then each
transform runs `--repeats` times back to back on the arrays of its last call in training
(held, not copied), so they sit in cache. The ratio says how much of a transform's time in training is
waiting for memory: what fusing it with its neighbours (the products, batch norm) could win.
Medians; JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import COMMON, DEFAULT_SPEC, cpu_model, median_of

from hpo.kernels import winograd
from hpo.search.objective import Objective
from hpo.spec.space import Fixed
from hpo.spec.study_spec import load_spec
from hpo.training.data import cv_pairs, resolve_data_dir

TRANSFORMS = (
    "_input_to_points",
    "_weight_to_points",
    "_points_to_output",
    "_output_gradient",
    "_weight_gradient",
    "_input_gradient",
)


class Recorder:
    """Wraps the transforms as hpo.kernels.winograd calls them: each call's seconds and its last
    arguments, per transform and shapes (training batches and validation chunks differ)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple, list[float]] = defaultdict(list)
        self.last: dict[tuple, tuple] = {}
        self.originals = {name: getattr(winograd, name) for name in TRANSFORMS}

    def __enter__(self) -> Recorder:
        for name, run in self.originals.items():
            setattr(winograd, name, self._timed(name, run))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, run in self.originals.items():
            setattr(winograd, name, run)

    def _timed(self, name: str, run: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            start = time.perf_counter()
            run(*args)
            key = (name, *(a.shape for a in args[:2]))
            self.seconds[key].append(time.perf_counter() - start)
            self.last[key] = args  # numpy views that keep their tensors alive: no copy in the timed loop

        return call

    def training_step(self, name: str) -> tuple:
        """The transform's most frequent shapes: the training batches'."""
        return max((k for k in self.seconds if k[0] == name), key=lambda k: len(self.seconds[k]))


def warm_us(run: Callable[..., None], args: tuple, repeats: int) -> float:
    """Median microseconds of a call on arrays it has just used (warm in cache)."""
    run(*args)
    return 1e6 * median_of(repeats, lambda: run(*args))[0]


def common_trial(epochs: int, conv1: int) -> Callable[[], float]:
    params = {**COMMON, "conv1_channels": conv1}
    spec = load_spec(DEFAULT_SPEC).with_overrides(epochs=epochs, pruner="none")
    spec = replace(spec, space={name: Fixed(value) for name, value in params.items()})
    pairs = cv_pairs(resolve_data_dir(None), spec.train.train_pairs, spec.seed)
    objective = Objective(spec, pairs, torch.device("cpu"))
    return lambda: objective(optuna.trial.FixedTrial(dict(params)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--conv1", type=int, default=16, help="the first convolution's channels (16 or 32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=200, help="warm calls per transform")
    ap.add_argument("--quick", action="store_true", help="1 epoch, 5 warm calls")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    epochs, repeats = (1, 5) if args.quick else (args.epochs, args.repeats)
    torch.set_num_threads(args.threads)
    trial = common_trial(epochs, args.conv1)
    trial()  # the first trial pays for allocations and numba's cache
    with Recorder() as seen:
        start = time.perf_counter()
        trial()
        wall = time.perf_counter() - start
    rows = {}
    for name in TRANSFORMS:
        key = seen.training_step(name)
        times = seen.seconds[key]
        in_training = statistics.median(times) * 1e6
        warm = warm_us(seen.originals[name], seen.last[key], repeats)
        rows[name] = {
            "shapes": [list(shape) for shape in key[1:]],
            "calls": len(times),
            "in_training_us": round(in_training, 1),
            "warm_us": round(warm, 1),
            "ratio": round(in_training / warm, 2),
            "share_of_trial": round(sum(times) / wall, 4),
        }
    result = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "epochs": epochs,
        "conv1": args.conv1,
        "trial_s": round(wall, 3),
        "transforms": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
