"""What the read-only commands do: list the studies, write a report or an export, serve the dashboard.

No torch here: these commands start fast and run where no training could.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.readers.ensemble import ENSEMBLE_KEY, pick_counts
from hpo.readers.results import load_existing_study
from hpo.spec.pin import PIN_KEY
from hpo.store.connect import open_existing_storage


@dataclass(frozen=True)
class StudyRow:
    name: str
    counts: dict[str, int]  # trials by state name, plus "trials"
    best: float | None
    spec: str  # the spec it is pinned to: where it came from and its hash
    ensemble: str = "-"  # the last `hpo evaluate --ensemble K`: its test accuracy and members


def list_studies(url: str) -> list[StudyRow]:
    """The studies in a store with their trial counts and best values."""
    storage = open_existing_storage(url)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
        counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
        best = s.best_trial.value if s.best_trial is not None else None
        pin = s.user_attrs.get(PIN_KEY) or {}
        spec = f"{Path(pin.get('source') or '?').name} {pin['hash'][:8]}" if "hash" in pin else "-"
        rows.append(StudyRow(s.study_name, {"trials": len(trials), **counts}, best, spec, ensemble_line(s.user_attrs)))
    return rows


def ensemble_line(attrs: dict[str, Any]) -> str:
    """'98.75 ± 0.30 (5 weighted: #141 x3, #140 x2)' from the study's last ensemble test, or '-'."""
    ev = attrs.get(ENSEMBLE_KEY)
    if not ev:
        return "-"
    members = ", ".join(f"#{trial} x{count}" for trial, count in pick_counts(ev.get("picks", [])).items())
    mode = ev.get("mode", "weighted")
    return f"{100 * ev['mean']:.2f} ± {100 * ev['std']:.2f} ({ev.get('ensemble')} {mode}: {members})"


def report(study_name: str, url: str, out: Path) -> optuna.Study:
    """Write the HTML report of a study to `out`; returns the study (for the cell table)."""
    from hpo.readers.html_report import build_report
    from hpo.readers.out_files import check_out, write_out

    check_out(out)
    study = load_existing_study(url, study_name)
    write_out(out, build_report(study))
    return study


def export(study_name: str, url: str, fmt: str, out: Path | None) -> str | None:
    """The study's trials as CSV or JSON: written to `out`, or returned when `out` is None."""
    from hpo.readers.out_files import check_out, write_out
    from hpo.readers.trial_table import FORMATS
    from hpo.readers.trial_table import export as render

    if fmt not in FORMATS:
        raise HpoError(f"--format must be csv or json; got '{fmt}'")
    check_out(out)
    text = render(load_existing_study(url, study_name), fmt)
    if out is None:
        return text
    write_out(out, text)
    return None


def dashboard_app(url: str) -> Any:
    """optuna-dashboard's WSGI app on an existing store."""
    from optuna_dashboard import wsgi

    return wsgi(open_existing_storage(url))
