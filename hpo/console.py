"""What the CLI prints: rich tables and progress bars over the application layer's results."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from hpo.app import OptimizeResult
from hpo.readers.listing import StudyRow
from hpo.readers.results import RULE_NAMES, fmt, is_multi_objective
from hpo.search.loop import finished_trials
from hpo.search.signals import Interrupted
from hpo.store.connect import shown_url

out = Console()
err = Console(stderr=True)


def say(line: str) -> None:
    """One plain line on stderr (status, errors): no markup, no wrapping of URLs."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def _progress(*columns: Any) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeElapsedColumn(),
        console=err,
    )


class StudyProgress:
    """app.OptimizeEvents as a progress bar over finished trials that shows the best value so far."""

    def __init__(self) -> None:
        self.progress = _progress(TextColumn("best {task.fields[best]}"))
        self.task: Any = None
        self.study: optuna.Study | None = None

    def notice(self, line: str) -> None:
        say(line)

    def started(self, study: optuna.Study, target: int) -> None:
        self.study = study
        done = min(finished_trials(study), target)
        self.task = self.progress.add_task(f"study {study.study_name}", total=target, completed=done, best=_best(study))
        self.progress.start()

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial | None) -> None:
        self.progress.update(self.task, completed=finished_trials(study), best=_best(study))

    def stopped(self) -> None:
        self.progress.stop()


def _best(study: optuna.Study) -> str:
    if is_multi_objective(study):
        return f"pareto {len(study.best_trials)}"
    try:
        return f"{study.best_value:.4f}"
    except ValueError:
        return "-"


class EpochProgress:
    """app.EpochEvents as a progress bar over training epochs (or over whatever unit the caller counts)."""

    def __init__(self) -> None:
        self.progress = _progress(TextColumn("{task.fields[unit]}"))
        self.task: Any = None

    def started(self, description: str, total: int, unit: str = "epochs") -> None:
        self.task = self.progress.add_task(description, total=total, unit=unit)
        self.progress.start()

    def epoch(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def stopped(self) -> None:
        self.progress.stop()


def interrupted_line(exc: Interrupted, study_name: str, finished: int) -> str:
    """What a stopped worker leaves behind, in one line."""
    line = f"interrupted by {exc}: study '{study_name}' keeps its {finished} finished trials"
    if exc.trials:
        held = ", ".join(
            f"#{t} queued for retry as #{r}" if r is not None else f"#{t} with no retries left" for t, r in exc.trials
        )
        return line + f"; the running trials were marked FAIL ({held})"
    if exc.trial_number is None:
        return line + "; no trial was running"
    if exc.retry is None:
        return line + f"; the running trial #{exc.trial_number} was marked FAIL (no retries left)"
    return line + f"; the running trial #{exc.trial_number} was marked FAIL and queued for retry as #{exc.retry}"


def _param_table(title: str | None, params: dict[str, Any], first: str = "parameter") -> Table:
    table = Table(title=title)
    table.add_column(first)
    table.add_column("value", justify="right")
    for name, value in params.items():
        table.add_row(name, str(fmt(value)))
    return table


def print_optimize(result: OptimizeResult) -> None:
    study, best = result.study, result.recommended
    if result.pareto:
        print_pareto(study, result.pareto)
        return
    if best is None:
        out.print(f"study '{study.study_name}' has no complete trial yet")
        return
    # A line of its own, not the table's title, which wraps to the table's (narrow) width.
    how = RULE_NAMES[result.rule]
    out.print(
        f"recommended trial of study '{study.study_name}': #{best.number} ({how})", highlight=False, soft_wrap=True
    )
    table = _param_table(None, best.params)
    table.add_row("[bold]CV accuracy", f"[bold]{best.value:.4f}")
    folds = best.user_attrs.get("fold_accuracies")
    if folds:
        table.add_row("fold accuracies", " ".join(f"{a:.3f}" for a in folds))
    out.print(table)


def print_pareto(study: optuna.Study, front: list[FrozenTrial]) -> None:
    names = study.metric_names or [f"value {i}" for i in range(len(study.directions))]
    table = Table(title=f"Pareto front of study '{study.study_name}'")
    table.add_column("trial", justify="right")
    for name, direction in zip(names, study.directions):
        table.add_column(f"{name} ({direction.name.lower()})", justify="right")
    for trial in front:
        table.add_row(str(trial.number), *(f"{v:.4g}" for v in trial.values))
    out.print(table)


def print_specs(specs: dict[str, str]) -> None:
    table = Table(title="built-in specs (hpo optimize --spec NAME)")
    table.add_column("name")
    table.add_column("what it is")
    for name, line in specs.items():
        table.add_row(name, line)
    out.print(table)


def print_studies(url: str, rows: list[StudyRow]) -> None:
    if not rows:
        out.print(f"no studies in {shown_url(url)}")
        return
    table = Table(title=f"studies in {shown_url(url)}")
    columns = {
        "study": None,
        "trials": "trials",
        "complete": "COMPLETE",
        "pruned": "PRUNED",
        "failed": "FAIL",
        "running": "RUNNING",
    }
    for col in (*columns, "best value", "spec", "ensemble test %"):
        table.add_column(col, justify="left" if col in ("study", "spec", "ensemble test %") else "right")
    for row in rows:
        best = "-" if row.best is None else f"{row.best:.4f}"
        counts = (str(row.counts[key]) for key in list(columns.values())[1:])
        table.add_row(row.name, *counts, best, row.spec, row.ensemble)
    out.print(table)


def print_evaluation(label: str, params: dict[str, Any], result: Any) -> None:
    table = _param_table(f"test evaluation of {label}", params, first="")
    table.add_row("[bold]test accuracy (%)", f"[bold]{100 * result.mean:.2f} ± {100 * result.std:.2f}")
    table.add_row("digit (auxiliary) accuracy (%)", f"{100 * result.digit_mean:.2f}")
    table.add_row("parameters", f"{result.n_params:,}")
    table.add_row(
        "seconds per training",
        f"{result.seconds_per_training:.2f} (amortised: {result.rounds} rounds trained together in "
        f"{result.seconds:.1f} s)",
    )
    table.add_row(
        "rounds, pairs, epochs, seed", f"{result.rounds}, {result.pairs}+{result.pairs}, {result.epochs}, {result.seed}"
    )
    table.add_row("round accuracies", " ".join(f"{a:.3f}" for a in result.accuracies))
    out.print(table)


def print_cells(study: optuna.Study) -> None:
    """The weight-sharing x auxiliary-loss table of `hpo report`, when the study varies both."""
    from hpo.readers.html_report import ABLATION_COLUMNS, ablation_cells, ablation_rows

    cells = ablation_cells(study)
    if len(cells) < 2:
        return
    table = Table(title="weight sharing x auxiliary loss (complete trials)")
    for col in (*ABLATION_COLUMNS[:3], "mean CV accuracy", "std"):
        table.add_column(col, justify="right")
    for row in ablation_rows(cells):
        table.add_row(*map(str, row))
    out.print(table)
