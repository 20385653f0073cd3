"""A search trial's job folders and files: names, overrides, and the result read back from them.

A trial runs as ordinary job folders (one, or one per fold) named by its number and values; TRIAL_FILE tells
the job where to report its epochs (mlcap.pruning), PRUNED_FILE says the pruner stopped it, and its
metrics.json holds the objective. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcap.runs import FAILED_FILE, METRICS_FILE, read_json
from mlcap.search_space import OBJECTIVE

SEARCH_FILE = "search.json"  # in the sweep folder: what was searched, for the report and the re-run check
TRIAL_FILE = "trial.json"  # in a trial's job folder: where the job reports its epochs (mlcap.pruning)
PRUNED_FILE = "pruned.json"  # in a trial's job folder: written by the job when the pruner stopped it
CALLBACK_KEY = "callbacks.optuna_pruning"
_MAX_NAME = 120


def trial_folder(number: int, params: Mapping[str, Any], fold: int | None = None) -> str:
    """`trial-007_lr-0.00123_hidden_dim-64…[_fold-2]`: the trial's number and values, filesystem-safe."""
    from mlcap.sweep import job_name

    short = {key: key.rsplit(".", 1)[-1] for key in params}
    if len(set(short.values())) < len(short):
        short = {key: key for key in params}
    parts = [f"trial-{number:03d}"] + [f"{short[k]}-{_short_value(v)}" for k, v in params.items()]
    suffix = f"_fold-{fold}" if fold is not None else ""
    name = "_".join(parts)
    if len(name) + len(suffix) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - len(suffix) - 9]}-{job_name(parts)[-8:]}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name + suffix)


def _short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_overrides(number: int, params: Mapping[str, Any], folds: int | None, fold: int | None) -> list[str]:
    """A trial job's own overrides: its values, its fold, and the callback that reports its epochs."""
    from mlcap.sweep import format_value

    overrides = [f"{key}={format_value(key, value)}" for key, value in params.items()]
    if folds is not None:
        overrides += [f"data.folds={folds}", f"data.fold={fold}"]
    return [
        *overrides,
        f"+{CALLBACK_KEY}._target_=mlcap.pruning.OptunaPruning",
        f"+{CALLBACK_KEY}.trial={number}",
    ]


@dataclass
class TrialJobs:
    """One trial and its job folders (one, or one per fold)."""

    number: int
    params: dict[str, Any]
    jobs: list[Any]  # mlcap.sweep.SweepJob


def trial_result(sweep_dir: Path, folders: Sequence[str]) -> tuple[str, float | None]:
    """complete (mean objective over its folds), pruned (a fold stopped by the pruner) or failed."""
    values, pruned = [], False
    for name in folders:
        folder = sweep_dir / name
        if not (folder / METRICS_FILE).is_file() or (folder / FAILED_FILE).is_file():
            return "failed", None
        value = read_json(folder / METRICS_FILE).get(OBJECTIVE)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return "failed", None
        values.append(float(value))
        pruned = pruned or (folder / PRUNED_FILE).is_file()
    mean = sum(values) / len(values)
    return ("pruned" if pruned else "complete"), mean
