"""The search-quality benchmark: which strategy's recommendation tests best on pairs no study saw.

A strategy is sampler/pruner/resample (one study per study seed) x a recommendation rule (each
rule picks from the same study, so rules are compared on paired studies). For every strategy
and seed the study runs through hpo.app (as `hpo optimize` does, hpo.pool for --jobs > 1), each
rule's pick is tested with `hpo evaluate`'s rounds (app.evaluate) on --eval-seed, which no study
uses, and the table ranks strategies by their worst seed's held-out accuracy. Wall time is the
study's; CPU seconds count this process and its workers. `--ensemble K` also tests `hpo
evaluate --ensemble K` on each study.

    python benchmarks/search.py --quick                              # the test suite's smoke run
    python benchmarks/search.py --trials 30 --epochs 8 --rounds 5 \\
        --strategies tpe/median/fixed random/median/fixed tpe/median/reshuffle \\
        --out benchmarks/results/search-screen.json
    python benchmarks/search.py --merge a.json b.json --out all.json   # runs split over processes, as one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpo import app
from hpo.readers.results import RULES, pick_trial
from hpo.spec.study_spec import PRUNERS, RESAMPLES, SAMPLERS

DEFAULT_STRATEGIES = ("tpe/median/fixed", "random/median/fixed", "tpe/median/reshuffle", "tpe/wilcoxon/fixed")
QUICK_SPEC = """
[study]
name = "quick"
seed = 0
sampler = "tpe"
pruner = "median"
[train]
folds = 2
epochs = 1
train_pairs = 100
[space]
lr = { low = 1e-3, high = 1e-2, log = true }
conv1_channels = 16
conv2_channels = 32
hidden = 64
head = "compare"
batch_norm = true
"""


@dataclass(frozen=True)
class Strategy:
    sampler: str
    pruner: str
    resample: str

    @classmethod
    def parse(cls, text: str) -> Strategy:
        parts = text.split("/")
        if len(parts) != 3 or parts[0] not in SAMPLERS or parts[1] not in PRUNERS or parts[2] not in RESAMPLES:
            raise SystemExit(
                f"strategy '{text}' is not sampler/pruner/resample ({'|'.join(SAMPLERS)} / {'|'.join(PRUNERS)} / "
                f"{'|'.join(RESAMPLES)})"
            )
        return cls(*parts)

    @property
    def name(self) -> str:
        return f"{self.sampler}/{self.pruner}/{self.resample}"


def cpu_seconds() -> float:
    """User + system CPU of this process and every child it has waited for (the --jobs workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_study(strategy: Strategy, seed: int, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """One study, then each rule's pick tested on the evaluation rounds; one row per rule."""
    from hpo.pool import run_pool

    name = f"{strategy.name.replace('/', '-')}-s{seed}"
    storage = f"sqlite:///{folder / f'{name}.db'}"
    options = app.OptimizeOptions(
        trials=args.trials,
        spec=args.spec,
        study=name,
        storage=storage,
        seed=seed,
        epochs=args.epochs,
        sampler=strategy.sampler,
        pruner=strategy.pruner,
        resample=strategy.resample,
        enqueue_published=args.enqueue_published,
        threads=args.threads,
        jobs=args.jobs,
    )
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = (run_pool if args.jobs > 1 else app.optimize)(options, app.Silent())
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    study = result.study
    states = [t.state for t in study.get_trials(deepcopy=False)]
    tested: dict[int, Any] = {}
    rows = []
    for rule in args.rules:
        trial = pick_trial(study, None, rule)
        if trial.number not in tested:
            tested[trial.number] = evaluate(app.EvaluateOptions(study=name, trial=trial.number, storage=storage), args)
        ev = tested[trial.number]
        rows.append(
            {
                "strategy": strategy.name,
                "rule": rule,
                "seed": seed,
                "trial": trial.number,
                "cv": trial.value,
                "n_params": trial.user_attrs.get("n_params"),
                "test_mean": ev.mean,
                "test_std": ev.std,
                "test_accuracies": ev.accuracies,
                "wall_s": wall,
                "cpu_s": cpu,
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
            }
        )
    if args.ensemble and strategy.resample != "fresh":  # fresh pairs per trial leave no shared predictions
        ev = evaluate(app.EvaluateOptions(study=name, storage=storage, ensemble=args.ensemble), args)
        rows.append({**rows[0], "rule": f"ensemble-{args.ensemble}", "trial": None, "cv": None, "n_params": None})
        rows[-1].update(test_mean=ev.mean, test_std=ev.std, test_accuracies=ev.accuracies, wall_s=wall)
    return rows


def evaluate(options: app.EvaluateOptions, args: argparse.Namespace) -> Any:
    """`hpo evaluate`'s rounds on the held-out seed (the same code path as the command)."""
    o = app.EvaluateOptions(
        **{**options.__dict__, "rounds": args.rounds, "seed": args.eval_seed, "threads": args.threads}
    )
    return app.evaluate(o).evaluation


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per strategy x rule over its seeds, best worst-seed first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["rule"]), []).append(row)
    lines = []
    for (strategy, rule), rs in groups.items():
        tests = [r["test_mean"] for r in rs]
        lines.append(
            {
                "strategy": strategy,
                "rule": rule,
                "seeds": len(rs),
                "worst": min(tests),
                "mean": statistics.fmean(tests),
                "per_seed": tests,
                "wall_s": statistics.fmean(r["wall_s"] for r in rs),
                "cpu_s": statistics.fmean(r["cpu_s"] for r in rs),
                "complete": statistics.fmean(r["complete"] for r in rs),
                "pruned": statistics.fmean(r["pruned"] for r in rs),
            }
        )
    return sorted(lines, key=lambda line: (-line["worst"], -line["mean"], line["wall_s"]))


def markdown(lines: list[dict[str, Any]]) -> str:
    head = (
        "| strategy (sampler/pruner/resample) | rule | seeds | worst seed % | mean % | per seed % | wall s | CPU s "
        "| complete | pruned |\n|---|---|---:|---:|---:|---|---:|---:|---:|---:|"
    )
    body = [
        f"| {x['strategy']} | {x['rule']} | {x['seeds']} | {100 * x['worst']:.2f} | {100 * x['mean']:.2f} | "
        f"{' '.join(f'{100 * t:.2f}' for t in x['per_seed'])} | {x['wall_s']:.0f} | {x['cpu_s']:.0f} | "
        f"{x['complete']:.1f} | {x['pruned']:.1f} |"
        for x in lines
    ]
    return "\n".join([head, *body])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), help="sampler/pruner/resample")
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="study seeds")
    p.add_argument("--eval-seed", type=int, default=1000, help="the held-out rounds' seed (no study uses it)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the spec's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ensemble", type=int, default=0, help="also test `hpo evaluate --ensemble K`")
    p.add_argument("--spec", default=app.DEFAULT_SPEC)
    p.add_argument("--enqueue-published", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--jobs", type=int, default=1, help="worker processes per study (hpo.pool)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="where the studies' SQLite files go (default: temp)")
    p.add_argument("--out", type=Path, default=None, help="JSON out")
    p.add_argument("--quick", action="store_true", help="tiny studies of a 1-parameter spec: a smoke run for tests")
    p.add_argument("--merge", nargs="+", type=Path, help="combine the rows of earlier JSON outputs; runs nothing")
    args = p.parse_args(argv)
    for s in args.strategies:
        Strategy.parse(s)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.merge:  # runs split over processes (by strategy or seed) read as one benchmark
        rows = [row for path in args.merge for row in json.loads(path.read_text())["rows"]]
        report = write(rows, args, argv)
        print(markdown(report["table"]))
        return report
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if args.quick:
            quick = folder / "quick.toml"
            quick.write_text(QUICK_SPEC)
            args.spec, args.trials, args.rounds, args.epochs = str(quick), 3, 2, 1
            args.ensemble = args.ensemble or 2
        rows: list[dict[str, Any]] = []
        for text in args.strategies:
            for seed in args.seeds:
                rows += run_study(Strategy.parse(text), seed, args, folder)
                print(f"done {text} seed {seed}", file=sys.stderr, flush=True)
                report = write(rows, args, argv)  # after every study, so a stopped run keeps what it measured
    print(markdown(report["table"]))
    return report


def write(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    report = {
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "table": summarise(rows),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
