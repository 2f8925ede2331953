"""Does cross-validation see what the held-out test sees? A change scored by the study's own CV.

`benchmarks/paired.py` measures a change (say, wider encoders) on the held-out rounds. This
scores the same configurations, with and without the change, the way a default-study trial is
scored: the spec's folds and epochs on the study's 1,000 pairs (study seed `--study-seed`),
each from `--inits` initialisations (trial numbers 0, 1, ...), all folds scored after the last
epoch. Prints per configuration the CV accuracy and out-of-fold log loss before and after and,
given the paired.py JSON, the held-out difference beside them; writes JSON.

    python benchmarks/cv_sees.py benchmarks/results/widths/paired-widths.json --inits 3 \\
        --out benchmarks/results/widths/cv-sees.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from hpo.spec.study_spec import StudySpec, load_spec
from hpo.training.cv import cross_validate, study_folds, trial_seeds
from hpo.training.data import Folds, Pairs, cv_pairs, resolve_data_dir
from hpo.training.ensemble import out_of_fold
from hpo.training.precision import resolve_device


def cv_score(params: dict[str, Any], spec: StudySpec, pairs: Pairs, folds: Folds, inits: int) -> tuple[float, float]:
    """Mean CV accuracy and out-of-fold log loss over `inits` initialisations."""
    accuracies, losses = [], []
    for number in range(inits):
        seeds = trial_seeds(spec.seed, number, folds.k)
        result = cross_validate(
            params, spec.train, pairs, folds, seeds, resolve_device("cpu"), validate_every_epoch=False
        )
        accuracies.append(statistics.fmean(result.accuracies))
        p = out_of_fold(result.model, pairs, folds)
        held = ~torch.isnan(p)
        y = pairs.targets[held].float()
        q = p[held].clamp(1e-6, 1 - 1e-6)
        losses.append(float(-(y * q.log() + (1 - y) * (1 - q).log()).mean()))
    return statistics.fmean(accuracies), statistics.fmean(losses)


def run(
    paired: dict[str, Any], spec_name: str, study_seed: int, inits: int, data_dir: str | None
) -> list[dict[str, Any]]:
    spec = load_spec(spec_name)
    spec = dataclasses.replace(spec, seed=study_seed)
    pairs = cv_pairs(resolve_data_dir(data_dir), spec.train.train_pairs, spec.seed)
    folds = study_folds(pairs, spec.train.folds, spec.seed)
    rows = []
    for row in paired["rows"]:
        before_params = json.loads(Path(row["record"]).read_text())["params"]
        before = cv_score(before_params, spec, pairs, folds, inits)
        after = cv_score(row["params"], spec, pairs, folds, inits)
        rows.append(
            {
                "record": row["record"],
                "trial": row["trial"],
                "cv_before": before[0],
                "cv_after": after[0],
                "logloss_before": before[1],
                "logloss_after": after[1],
                "test_difference_points": row["difference_points"],
            }
        )
        print(
            f"{Path(row['record']).name}: CV {100 * before[0]:.2f} -> {100 * after[0]:.2f}, log loss "
            f"{before[1]:.4f} -> {after[1]:.4f}; held-out {row['difference_points']:+.2f}"
        )
    return rows


def table(rows: list[dict[str, Any]], inits: int) -> str:
    out = [
        f"| configuration | CV % before -> after (mean of {inits} inits) | OOF log loss before -> after "
        "| held-out test, points |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {Path(r['record']).name} (#{r['trial']}) | {100 * r['cv_before']:.2f} -> {100 * r['cv_after']:.2f} | "
            f"{r['logloss_before']:.4f} -> {r['logloss_after']:.4f} | {r['test_difference_points']:+.2f} |"
        )
    cv = [100 * (r["cv_after"] - r["cv_before"]) for r in rows]
    ll = [r["logloss_after"] - r["logloss_before"] for r in rows]
    test = [r["test_difference_points"] for r in rows]
    se = statistics.stdev(cv) / math.sqrt(len(cv)) if len(cv) > 1 else float("nan")
    out.append(
        f"| mean over {len(rows)} | {statistics.fmean(cv):+.2f} ± {se:.2f} | {statistics.fmean(ll):+.4f} | "
        f"{statistics.fmean(test):+.2f} |"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paired", type=Path, help="a benchmarks/paired.py --out JSON")
    parser.add_argument("--spec", default="twin", help="whose folds and epochs score the trials (default: twin)")
    parser.add_argument("--study-seed", type=int, default=0, help="the study seed whose pairs and folds are used")
    parser.add_argument("--inits", type=int, default=3, help="initialisations per configuration")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $HPO_DATA_DIR or the cache)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.paired.is_file():
        parser.error(f"no paired.py JSON at '{args.paired}'")
    rows = run(json.loads(args.paired.read_text()), args.spec, args.study_seed, args.inits, args.data_dir)
    print(table(rows, args.inits))
    if args.out is not None:
        args.out.write_text(
            json.dumps({"paired": str(args.paired), "inits": args.inits, "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
