"""The search part of a sweep's report.md (`-m hparams_search=...`, mlcap.search): every trial with its state,
values, F1, epochs and time; the best trial as a ready command line and its per-class table; Optuna's
optimisation history and parameter importances as PNGs; trials.csv for other tools.

The study's storage says what Optuna decided (state, objective); the trial folders say what each run did
(metrics.json, pruned.json). `mlcap.report.write_report` adds these sections when the sweep folder holds a
search (its search.json).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcap.runs import METRICS_FILE, atomic_path, read_json, write_atomic
from mlcap.search import OBJECTIVE, PRUNED_FILE, SEARCH_FILE, TRIAL_FILE, open_storage

log = logging.getLogger(__name__)

HISTORY_PLOT = "optuna_history.png"
IMPORTANCE_PLOT = "optuna_importances.png"


def is_search(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / SEARCH_FILE).is_file()


def trial_folders(sweep_dir: Path) -> dict[int, list[Path]]:
    """{trial number: its job folders (one, or one per fold)}, from the trial.json the sweeper wrote."""
    folders: dict[int, list[Path]] = {}
    for record in sorted(sweep_dir.glob(f"*/{TRIAL_FILE}")):
        number = read_json(record).get("number")
        if isinstance(number, int):
            folders.setdefault(number, []).append(record.parent)
    return folders


def trials_frame(sweep_dir: Path) -> tuple[pd.DataFrame, Any, dict[str, Any]]:
    """One row per trial of the study (state, values, objective, best F1, epochs, time, folders); the study;
    the search record."""
    import optuna

    record = read_json(sweep_dir / SEARCH_FILE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=record["study_name"], storage=open_storage(record["storage"]))
    folders = trial_folders(sweep_dir)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        metrics = [
            read_json(f / METRICS_FILE) for f in folders.get(trial.number, []) if (f / METRICS_FILE).is_file()
        ]
        f1s = [m[OBJECTIVE] for m in metrics if isinstance(m.get(OBJECTIVE), int | float)]
        pruned_at = [
            read_json(f / PRUNED_FILE).get("epoch")
            for f in folders.get(trial.number, [])
            if (f / PRUNED_FILE).is_file()
        ]
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name.lower()}
        row.update({key: trial.params.get(key) for key in record["params"]})
        row["objective"] = trial.value
        row["val_samples_f1"] = sum(f1s) / len(f1s) if f1s else None
        row["epochs"] = sum(int(m.get("epochs") or 0) for m in metrics) if metrics else None
        row["pruned_after_epoch"] = pruned_at[0] if pruned_at else None
        row["wall_time_s"] = sum(float(m.get("wall_time_s") or 0.0) for m in metrics) if metrics else None
        row["folders"] = " ".join(f.name for f in folders.get(trial.number, []))
        rows.append(row)
    return pd.DataFrame(rows), study, record


def best_trial_row(frame: pd.DataFrame, direction: str) -> tuple[pd.Series | None, str]:
    """The best completed trial by objective; without one, the best pruned trial by its F1 (and a note)."""
    ascending = direction == "minimize"
    complete = frame[(frame["state"] == "complete") & frame["objective"].notna()]
    if not complete.empty:
        return complete.sort_values("objective", ascending=ascending).iloc[0], ""
    scored = frame[frame["val_samples_f1"].notna()]
    if scored.empty:
        return None, "No trial has finished yet."
    note = "No trial completed (all were pruned or failed): this is the pruned trial with the best F1."
    return scored.sort_values("val_samples_f1", ascending=ascending).iloc[0], note


def best_command(record: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """`python train.py <the search's own overrides> <the trial's values>`: the best setting, one run."""
    from mlcap.sweep import format_value

    values = [f"{key}={format_value(key, value)}" for key, value in params.items()]
    parts = [o for o in record.get("base_overrides", []) if not o.startswith("hydra.")]
    return " ".join(["python train.py", *parts, *values])


def search_sections(sweep_dir: str | Path) -> list[str]:
    """report.md's search sections (empty when the sweep is no search); writes trials.csv and the plots."""
    sweep_dir = Path(sweep_dir)
    if not is_search(sweep_dir):
        return []
    frame, study, record = trials_frame(sweep_dir)
    if frame.empty:
        return ["## Search", "", "The study has no trials yet.", ""]
    write_atomic(sweep_dir / "trials.csv", frame.to_csv(index=False))
    counts = frame["state"].value_counts()
    folds = record.get("folds")
    objective = f"mean val samples-F1 over {folds} folds" if folds else "val samples-F1"
    lines = [
        f"## Search: study `{record['study_name']}`",
        "",
        f"{len(frame)} trials: {', '.join(f'{n} {s}' for s, n in counts.items())}. Objective: {objective} "
        f"({record['direction']}), storage `{record['storage']}`. Time is the trials' run time (all folds); "
        "a pruned trial's F1 is that of its best epoch before it was stopped.",
        "",
        _markdown(_display(frame, list(record["params"]))),
        "",
    ]
    best, note = best_trial_row(frame, record["direction"])
    if best is not None:
        params = {key: _plain(best[key]) for key in record["params"]}
        lines += [
            f"### Best trial: {int(best['trial'])}",
            "",
            *([note, ""] if note else []),
            f"val samples-F1 {_number(best['val_samples_f1'])} ({best['state']}); its settings as one run"
            + (
                " (on the usual single split; add `data.folds=... data.fold=...` for a fold):"
                if folds
                else ":"
            ),
            "",
            "```",
            best_command(record, params),
            "```",
            "",
        ]
        lines += _per_class(sweep_dir, str(best["folders"]).split())
    lines += _plots(sweep_dir, study)
    return lines


def _display(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    shown = pd.DataFrame({"trial": frame["trial"], "state": frame["state"]})
    for key in keys:
        shown[key] = frame[key].map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    shown["objective"] = frame["objective"].map(_number)
    shown["best F1"] = frame["val_samples_f1"].map(_number)
    shown["epochs"] = frame["epochs"].map(lambda v: "—" if v is None or pd.isna(v) else str(int(v)))
    shown["time"] = frame["wall_time_s"].map(
        lambda v: "—" if v is None or pd.isna(v) else f"{v / 60:.1f} min"
    )
    return shown


def _plain(value: Any) -> Any:
    """A pandas cell (numpy scalar) as the Python value an override is written from."""
    return value.item() if hasattr(value, "item") else value


def _number(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False)


def _per_class(sweep_dir: Path, folders: Sequence[str]) -> list[str]:
    tables = [sweep_dir / name / "per_class.md" for name in folders]
    found = [t for t in tables if t.is_file()]
    if not found:
        return []
    which = f" (folder `{found[0].parent.name}`)" if len(folders) > 1 else ""
    return ["#### Its per-class table" + which, "", found[0].read_text().rstrip(), ""]


def _plots(sweep_dir: Path, study: Any) -> list[str]:
    """Optuna's own matplotlib plots; importances need at least two completed trials that differ."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    lines = ["### Optuna plots", ""]
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for name in (HISTORY_PLOT, IMPORTANCE_PLOT):
            (sweep_dir / name).unlink(missing_ok=True)
        return [*lines, "None yet: Optuna plots completed trials only, and no trial has completed.", ""]
    for name, plot, title in (
        (HISTORY_PLOT, plot_optimization_history, "optimisation history"),
        (IMPORTANCE_PLOT, plot_param_importances, "parameter importances"),
    ):
        path = sweep_dir / name
        try:
            axes = plot(study)
            figure = axes.figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            with atomic_path(path) as tmp:
                figure.savefig(tmp, dpi=100)
            plt.close(figure)
            lines += [f"![{title}]({name})", ""]
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few completed trials for it
            plt.close("all")
            path.unlink(missing_ok=True)
            lines += [f"No {title} plot: {' '.join(str(err).split())}", ""]
    return lines
