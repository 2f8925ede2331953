"""One self-contained HTML report of a study: Optuna's plotly figures plus our own.

Single-objective studies get the optimisation history, pruning curves, importances, parallel
coordinates and slices; studies with several objectives get the Pareto front and per-objective
importances instead. Both get the weight-sharing x auxiliary-loss summary, the top trials and
the saved evaluation. plotly.js is inlined once, so the file opens with no network.
"""

from __future__ import annotations

import html
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial, TrialState

from hpo.readers.ensemble import ENSEMBLE_KEY
from hpo.readers.results import fmt, full_params, is_multi_objective, pick_trial

TOP_TRIALS = 10


@dataclass(frozen=True)
class Cell:
    """Complete trials of one weight-sharing x auxiliary-loss combination."""

    weight_sharing: bool
    aux_loss: bool
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def objective_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    if names:
        return list(names)
    if not is_multi_objective(study):
        return ["CV accuracy"]
    return [f"objective {i}" for i in range(len(study.directions))]


def ablation_cells(study: optuna.Study) -> list[Cell]:
    """The first objective of complete trials, grouped by weight sharing and aux_weight > 0."""
    groups: dict[tuple[bool, bool], list[float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        params = full_params(t)
        if "weight_sharing" in params and "aux_weight" in params:
            key = (bool(params["weight_sharing"]), params["aux_weight"] > 0)
            groups.setdefault(key, []).append(t.values[0])
    return [Cell(ws, aux, tuple(groups[ws, aux])) for ws, aux in sorted(groups, reverse=True)]


ABLATION_COLUMNS = ("weight sharing", "aux loss (aux_weight > 0)", "trials", "mean", "std")


def ablation_rows(cells: list[Cell]) -> list[tuple[str, str, int, str, str]]:
    """The cell table as text rows (the HTML report and `hpo report`'s console table)."""
    return [(_on(c.weight_sharing), _on(c.aux_loss), len(c.values), f"{c.mean:.4f}", f"{c.std:.4f}") for c in cells]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def top_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best complete trials; with several objectives, the Pareto front by first objective."""
    if is_multi_objective(study):
        trials = study.best_trials
    else:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return sorted(trials, key=lambda t: t.values[0], reverse=reverse)[:TOP_TRIALS]


Section = tuple[str, str]  # title, HTML body


def build_report(study: optuna.Study) -> str:
    """The whole report as one HTML document."""
    sections = [_summary(study)]
    sections += _optuna_figures(study)
    sections.append(_ablation_section(study))
    sections.append(_top_trials_section(study))
    evaluation = study.user_attrs.get("evaluation")
    if evaluation:
        sections.append(_evaluation_section(evaluation))
    ensemble = study.user_attrs.get(ENSEMBLE_KEY)
    if ensemble:
        sections.append(_ensemble_section(ensemble))
    body = "\n".join(f"<section><h2>{html.escape(title)}</h2>\n{content}</section>" for title, content in sections)
    title = f"hpo report: study {html.escape(study.study_name)}"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>\n"
        f"<style>{_CSS}</style>\n<script>{plotly.offline.get_plotlyjs()}</script>\n</head>\n"
        f"<body><h1>{title}</h1>\n{body}\n</body></html>\n"
    )


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
section { margin-bottom: 2.5em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
.note { color: #666; font-style: italic; }
"""


def _figure(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False)


def _guarded(make: Callable[[], go.Figure]) -> str:
    """A figure, or the reason Optuna could not draw it (e.g. too few complete trials)."""
    try:
        return _figure(make())
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return f"<p class='note'>not available: {html.escape(str(exc))}</p>"


def _optuna_figures(study: optuna.Study) -> list[Section]:
    names = objective_names(study)
    if not is_multi_objective(study):
        return [
            ("Optimisation history", _guarded(lambda: vis.plot_optimization_history(study, target_name=names[0]))),
            ("Intermediate values (pruning curves)", _guarded(lambda: vis.plot_intermediate_values(study))),
            ("Parameter importances", _guarded(lambda: vis.plot_param_importances(study, params=_searched(study)))),
            ("Parallel coordinates", _guarded(lambda: vis.plot_parallel_coordinate(study, target_name=names[0]))),
            ("Slices", _guarded(lambda: vis.plot_slice(study, target_name=names[0]))),
        ]
    sections = [("Pareto front", _guarded(lambda: vis.plot_pareto_front(study, target_names=names)))]
    for i, name in enumerate(names):
        sections.append(
            (f"Parameter importances for {name}", _guarded(lambda i=i, name=name: _importances(study, i, name)))
        )
    sections.append(
        (
            f"Parallel coordinates ({names[0]})",
            _guarded(lambda: vis.plot_parallel_coordinate(study, target=lambda t: t.values[0], target_name=names[0])),
        )
    )
    return sections


def _importances(study: optuna.Study, objective: int, name: str) -> go.Figure:
    """Importances for one objective; PED-ANOVA ranks by low target values, so maximised ones are negated."""
    sign = -1.0 if study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*computes the importances of params to achieve low")
        return vis.plot_param_importances(
            study, params=_searched(study), target=lambda t: sign * t.values[objective], target_name=name
        )


def _searched(study: optuna.Study) -> list[str] | None:
    """The sampled parameters without `repeat`, a label whose 'importance' is only noise."""
    names = {p for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for p in t.params}
    return sorted(names - {"repeat"}) or None


def _summary(study: optuna.Study) -> Section:
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(
        f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in TrialState if any(t.state == s for t in trials)
    )
    directions = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(objective_names(study), study.directions))
    rows = [("trials", f"{len(trials)}: {counts or 'none'}"), ("objectives", directions)]
    if not is_multi_objective(study) and any(t.state == TrialState.COMPLETE for t in trials):
        rows.append(("best value", f"{study.best_value:.4f} (trial #{study.best_trial.number})"))
        recommended = pick_trial(study, None)
        rows.append(("recommended trial", f"#{recommended.number}: CV {recommended.value:.4f}"))
    return "Study", _table(["", ""], rows, header=False)


def _ablation_section(study: optuna.Study) -> Section:
    title = "Weight sharing x auxiliary loss"
    cells = ablation_cells(study)
    if not cells:
        return title, "<p class='note'>no complete trial names both weight_sharing and aux_weight</p>"
    name = objective_names(study)[0]
    fig = go.Figure()
    for sharing in (True, False):
        row = [c for c in cells if c.weight_sharing == sharing]
        if row:
            fig.add_bar(
                name=f"weight sharing {_on(sharing)}",
                x=[f"aux loss {_on(c.aux_loss)}" for c in row],
                y=[c.mean for c in row],
                error_y={"type": "data", "array": [c.std for c in row]},
                text=[f"{c.mean:.4f} (n={len(c.values)})" for c in row],
            )
    fig.update_layout(barmode="group", yaxis_title=f"mean {name}", title=f"mean {name} per cell (error bars: std)")
    columns = [*ABLATION_COLUMNS[:3], f"mean {name}", ABLATION_COLUMNS[4]]
    table = _table(columns, ablation_rows(cells))
    return title, table + _figure(fig)


def _top_trials_section(study: optuna.Study) -> Section:
    trials = top_trials(study)
    title = "Pareto-optimal trials" if is_multi_objective(study) else f"Top {TOP_TRIALS} trials"
    if not trials:
        return title, "<p class='note'>no complete trials yet</p>"
    names = objective_names(study)
    params = sorted({p for t in trials for p in full_params(t)})
    rows = []
    for t in trials:
        full = full_params(t)
        rows.append(
            (
                t.number,
                *(f"{v:.4f}" if isinstance(v, float) else v for v in t.values),
                *(fmt(full.get(p, "")) for p in params),
                t.user_attrs.get("n_params", ""),
                t.user_attrs.get("train_seconds", ""),
            )
        )
    return title, _table(["trial", *names, *params, "parameters", "train seconds"], rows)


def _evaluation_section(ev: dict[str, Any]) -> Section:
    accs = ev.get("accuracies", [])
    rows = [
        ("trial", f"#{ev.get('trial')}"),
        ("test accuracy", f"{_percent(ev)} % over {ev['rounds']} rounds"),
        ("digit (auxiliary) accuracy", f"{100 * ev.get('digit_accuracy', float('nan')):.2f} %"),
        ("parameters", f"{ev.get('n_params', '')}"),
        (
            "seconds per training",
            f"{ev.get('seconds_per_training', float('nan')):.2f} (amortised: all rounds trained together)",
        ),
        ("pairs per round, epochs, seed", f"{ev.get('pairs')}, {ev.get('epochs')}, {ev.get('seed')}"),
    ]
    fig = go.Figure(go.Bar(x=[f"round {i + 1}" for i in range(len(accs))], y=accs, text=[f"{a:.3f}" for a in accs]))
    fig.update_layout(title="test accuracy per round", yaxis_title="test accuracy")
    return "Evaluation on test pairs", _table(["", ""], rows, header=False) + _figure(fig)


def _percent(ev: dict[str, Any]) -> str:
    return f"{100 * ev['mean']:.2f} ± {100 * ev['std']:.2f}"


def _ensemble_section(ev: dict[str, Any]) -> Section:
    """`hpo evaluate --ensemble K`: the averaged members' test accuracy beside each member's alone."""
    mode = ev.get("mode", "weighted")
    how = "the recommended trial, trained" if mode == "seeds" else f"by greedy selection ({mode})"
    rows = [("members chosen", f"{ev.get('ensemble')} {how}: trials {ev.get('picks')}")]
    if "oof_accuracy" in ev:
        scored = f"accuracy {ev['oof_accuracy']:.4f}, log loss {ev.get('oof_log_loss', float('nan')):.4f}"
        rows.append(("out-of-fold on the study's pairs", scored))
    rows += [
        ("test accuracy", f"{_percent(ev)} % over {ev['rounds']} rounds"),
        ("pairs per round, seed", f"{ev.get('pairs')}, {ev.get('seed')}"),
    ]
    members = [
        (f"#{m['trial']}", m.get("copy", 0), m["weight"], _percent(m), m["n_params"]) for m in ev.get("members", [])
    ]
    table = _table(["trial", "copy", "weight", "test accuracy alone (%)", "parameters"], members)
    return "Ensemble of the leaders on test pairs", _table(["", ""], rows, header=False) + table


def _table(columns: list[str], rows: list[tuple[Any, ...]], header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"
