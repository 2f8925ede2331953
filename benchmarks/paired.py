"""Does a change pay on the configurations the search recommends? Paired 10-round tests.

Each input is an `hpo evaluate --json` record (its `params` and per-round `accuracies`). The
same configuration, with `--set` applied, is tested with `hpo evaluate`'s rounds (app.evaluate,
the command's code path, through a fixed spec) on the record's seed, so both sides train and
test on the same pairs round by round. Prints each configuration's before and after and the
mean of the per-round differences with its standard error; writes JSON.

    python benchmarks/paired.py benchmarks/results/bn-fixed/evaluate-seed*.json --set repair=true \\
        --out benchmarks/results/paired-repair.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from hpo import app


def parse_value(text: str) -> Any:
    """A --set value as TOML would read it: true/false, a number, else a string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def fixed_spec(params: dict[str, Any], epochs: int, folder: Path) -> Path:
    """A spec file with every parameter fixed, the way `hpo evaluate --spec` takes one."""
    lines = ['[study]\nname = "paired"\ndirection = "maximize"\n', f"[train]\nepochs = {epochs}\n", "[space]"]
    lines += [f"{name} = {toml_value(value)}" for name, value in params.items()]
    path = folder / "paired.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def differences(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean per-round difference (after - before, in points) and its standard error."""
    diffs = [100 * (a - b) for a, b in zip(after, before, strict=True)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return statistics.fmean(diffs), se


def evaluate(params: dict[str, Any], epochs: int, record: dict[str, Any], seed: int, threads: int | None) -> Any:
    """`hpo evaluate --spec` of these fixed parameters on the record's rounds and pairs, at `seed`."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = fixed_spec(params, epochs, Path(tmp))
        options = app.EvaluateOptions(
            spec=spec, rounds=record["rounds"], seed=seed, pairs=record["pairs"], threads=threads
        )
        return app.evaluate(options).record


def run(
    records: list[Path],
    changes: dict[str, Any],
    threads: int | None,
    epochs: int | None = None,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Each record's configuration with the changes, against the record (or, with another
    `seed`, against the record's configuration tested afresh on that seed's rounds)."""
    rows = []
    for path in records:
        before = json.loads(path.read_text())
        if seed is not None and seed != before["seed"]:
            fresh = evaluate(before["params"], before["epochs"], before, seed, threads)
            before = {**before, **{k: fresh[k] for k in ("seed", "accuracies", "mean", "std")}}
        params = {**before["params"], **changes}
        after = evaluate(params, epochs or before["epochs"], before, before["seed"], threads)
        diff, se = differences(before["accuracies"], after["accuracies"])
        rows.append(
            {
                "record": str(path),
                "trial": before.get("trial"),
                "before": before["mean"],
                "after": after["mean"],
                "after_std": after["std"],
                "difference_points": diff,
                "standard_error_points": se,
                "seconds": after["seconds"],
                "epochs": epochs or before["epochs"],
                "params": params,
                "seed": before["seed"],
                "before_accuracies": before["accuracies"],
                "accuracies": after["accuracies"],
            }
        )
        print(f"{path.name}: {100 * before['mean']:.2f} -> {100 * after['mean']:.2f} ({diff:+.2f} ± {se:.2f})")
    return rows


def table(rows: list[dict[str, Any]], changes: dict[str, Any]) -> str:
    change = ", ".join(f"{k} = {toml_value(v)}" for k, v in changes.items())
    out = [f"| configuration | before % | with {change} % | per-round difference (points) |", "|---|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {Path(r['record']).name} (#{r['trial']}) | {100 * r['before']:.2f} | "
            f"{100 * r['after']:.2f} ± {100 * r['after_std']:.2f} | "
            f"{r['difference_points']:+.2f} ± {r['standard_error_points']:.2f} |"
        )
    if len(rows) > 1:
        mean = statistics.fmean(r["difference_points"] for r in rows)
        out.append(f"| mean over {len(rows)} | | | {mean:+.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="hpo evaluate --json records")
    parser.add_argument("--set", dest="changes", action="append", default=[], help="NAME=VALUE, repeatable")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs (default: the record's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--seed", type=int, default=None, help="test both sides on this seed's rounds (default: the record's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    changes = {}
    for item in args.changes:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes NAME=VALUE; got {item!r}")
        changes[name.strip()] = parse_value(value.strip())
    if not changes and args.epochs is None:
        parser.error("nothing to change: give --set NAME=VALUE or --epochs N")
    rows = run(args.records, changes, args.threads, args.epochs, args.seed)
    print(table(rows, {**changes, **({"epochs": args.epochs} if args.epochs else {})}))
    if args.out is not None:
        args.out.write_text(json.dumps({"changes": changes, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
