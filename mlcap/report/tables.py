"""The sweep as tables: one row per job (jobs.csv), one per setting with mean ± std over seeds (settings.csv),
one per varied key for a one-at-a-time grid, and their Markdown text (values, metrics, sizes, run times).

Settings are told apart by their varied values (mlcap.runs.same_value); the base point of a grid is the value
most settings share, per key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcap.report.loading import FAILED, FIELD, FINISHED, INVALID, METRICS, SEED_KEY, UNFINISHED, JobRecord
from mlcap.run_facts import SIZE_LIMIT_MB
from mlcap.runs import ABSENT, same_value, write_atomic

SHOWN = ("train_loss", "val_loss", "val_samples_f1", "val_mAP", "val_CF1", "val_OF1")
METRIC_TITLES = {
    "train_loss": "train loss",
    "val_loss": "val loss",
    "val_samples_f1": "val samples-F1",
    **{m: f"val {m.removeprefix('val_')}" for m in FIELD},
}


def setting_key(config: dict[str, Any], keys: Sequence[str]) -> str:
    return json.dumps([config.get(k, ABSENT) for k in keys], default=str)


def jobs_frame(jobs: Sequence[JobRecord], keys: Sequence[str]) -> pd.DataFrame:
    """One row per job: name, status, varied values, seed, metrics, error."""
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status}
        row.update({k: job.config.get(k) for k in keys})
        row["seed"] = job.config.get(SEED_KEY)
        for m in (*METRICS, "model_size_mb", "under_100mb", "wall_time_s", "epochs", "best_epoch"):
            row[m] = job.metrics.get(m)
        row["error"] = job.error
        row["overrides"] = " ".join(job.overrides)
        row["setting"] = setting_key(job.config, keys) if job.config else None
        rows.append(row)
    frame = pd.DataFrame(rows, dtype=object)  # object: seeds and varied values keep their Python types
    for m in (*METRICS, "model_size_mb", "wall_time_s"):
        frame[m] = pd.to_numeric(frame[m], errors="coerce")
    return frame


def settings_table(jobs: Sequence[JobRecord], keys: Sequence[str]) -> pd.DataFrame:
    """One row per distinct setting: varied values, n finished seeds, metric mean/std, size, time, problems.

    std is the sample standard deviation over seeds (NaN when fewer than two finished).
    """
    frame = jobs_frame(jobs, keys)
    frame = frame[frame["setting"].notna()]
    rows = []
    for setting, group in frame.groupby("setting", sort=False):
        done = group[group["status"] == FINISHED]
        row: dict[str, Any] = dict(zip(keys, json.loads(str(setting)), strict=True))
        row["n"] = len(done)
        row["seeds"] = " ".join(str(s) for s in done["seed"])
        for m in METRICS:
            row[f"{m}_mean"] = done[m].mean()
            row[f"{m}_std"] = done[m].std()  # pandas: ddof=1, NaN for one value
        row["model_size_mb"] = done["model_size_mb"].max()
        row["over_size_limit"] = bool((done["model_size_mb"] > SIZE_LIMIT_MB).any())
        row["wall_time_s_mean"] = done["wall_time_s"].mean()
        row["failed"] = int(group["status"].isin([FAILED, INVALID]).sum())
        row["unfinished"] = int(group["status"].isin([UNFINISHED]).sum())
        row["jobs"] = " ".join(group["job"])
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(
    sweep_dir: Path, jobs: Sequence[JobRecord], keys: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """jobs.csv and settings.csv, written for other tools and returned for the report's own tables."""
    frame = jobs_frame(jobs, keys)
    write_atomic(sweep_dir / "jobs.csv", frame.drop(columns=["setting"]).to_csv(index=False))
    settings = settings_table(jobs, keys)
    if not settings.empty:
        write_atomic(sweep_dir / "settings.csv", settings.to_csv(index=False))
    return frame, settings


def base_values(settings: pd.DataFrame, keys: Sequence[str]) -> dict[str, Any]:
    """The grid's centre: per key the value most settings share (the base appears once per other axis); on a
    tie, the first in sweep order."""
    base = {}
    for key in keys:
        values = list(settings[key])
        counts = [sum(same_value(v, w) for w in values) for v in values]
        base[key] = values[counts.index(max(counts))]
    return base


def row_matches(row: pd.Series, values: dict[str, Any]) -> bool:
    return all(same_value(row[k], v) for k, v in values.items())


def _sorted_by(table: pd.DataFrame, key: str) -> pd.DataFrame:
    try:
        return table.sort_values(key, kind="stable")
    except TypeError:  # mixed types (e.g. null and numbers): keep sweep order
        return table


def one_at_a_time_tables(settings: pd.DataFrame, keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per varied key, the settings that differ from the base in that key only (base row included)."""
    base = base_values(settings, keys)
    tables = {}
    for key in keys:
        others = {k: v for k, v in base.items() if k != key}
        table = settings[settings.apply(lambda row, o=others: row_matches(row, o), axis=1)].copy()
        table.insert(len(keys), "base", table[key].map(lambda v, b=base[key]: same_value(v, b)))
        tables[key] = _sorted_by(table, key).reset_index(drop=True)
    return tables


# ------------------------------------------------------------------------------------------ formatting
def mean_std(mean: float, std: float, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "—"
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def duration(seconds: float) -> str:
    if pd.isna(seconds):
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def size_text(mb: float, over: bool) -> str:
    if pd.isna(mb):
        return "—"
    return f"{mb:.1f} ⚠ over {SIZE_LIMIT_MB:.0f} MB" if over else f"{mb:.1f}"


def display(table: pd.DataFrame, keys: Sequence[str], best_f1: float | None) -> pd.DataFrame:
    """Settings rows as Markdown-ready text; the best mean val samples-F1 in bold."""
    shown = pd.DataFrame({k: table[k].map(value_text) for k in keys})
    if "base" in table:
        shown["base"] = table["base"].map(lambda b: "✓" if b else "")
    counts = []
    for _, row in table.iterrows():
        extra = [f"{row[s]} {s}" for s in ("failed", "unfinished") if row[s]]
        counts.append(f"{row['n']}" + (f" (+{', '.join(extra)})" if extra else ""))
    shown["n"] = counts
    for m in SHOWN:
        shown[METRIC_TITLES[m]] = [
            mean_std(r[f"{m}_mean"], r[f"{m}_std"], r["n"]) for _, r in table.iterrows()
        ]
    if best_f1 is not None:
        is_best = table["val_samples_f1_mean"] == best_f1
        col = METRIC_TITLES["val_samples_f1"]
        shown.loc[is_best, col] = shown.loc[is_best, col].map(lambda t: f"**{t}**")
    shown[f"size MB (limit {SIZE_LIMIT_MB:.0f})"] = [
        size_text(r["model_size_mb"], r["over_size_limit"]) for _, r in table.iterrows()
    ]
    shown["run time"] = table["wall_time_s_mean"].map(duration)
    return shown


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


def slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)
