"""Sweep report: `python -m mlcap.report <multirun folder>` (also written automatically when a sweep ends).

Reads every job folder under the sweep folder (`.hydra/config.yaml`, `.hydra/overrides.yaml`, and
`metrics.json` or `failed.json`; neither means unfinished), plus the sweeper's `sweep_plan.json` for jobs
that never started. Writes into the sweep folder:

* `report.md`: one row per distinct setting (the config keys that differ between jobs, seed excluded) with
  train loss, val loss, val samples-F1 and the field's mAP, CF1 and OF1 as mean ± std over seeds, the model
  size against the 100 MB limit and the run time; for a one-at-a-time grid (sweep=table4) one table per varied key, each with the base
  point; the study's figures beside ours where the sweep carries them (hydra.callbacks.report.paper: its
  Tables 1-4 by setting, its best model's averages, per-class F1, run time and size beside our best setting);
  the best run's per-class table; failed and unfinished jobs;
* `jobs.csv`, `settings.csv` (and `settings_<key>.csv` for a one-at-a-time grid), `best_per_class.csv`;
* PNG plots of val samples-F1 against each varied key (error bars: std over seeds) and of the best run's
  per-class precision/recall/F1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mlcap.captioning.report import caption_sections
from mlcap.config_files import CONF_DIR
from mlcap.run_facts import SIZE_LIMIT_MB
from mlcap.runs import (
    FAILED_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PLAN_FILE,
    atomic_path,
    read_json,
    write_atomic,
)
from mlcap.search_report import search_sections

__all__ = [
    "JobRecord",
    "ReportCallback",
    "jobs_frame",
    "load_jobs",
    "main",
    "one_at_a_time_tables",
    "settings_table",
    "sweep_paper",
    "varied_keys",
    "write_report",
]

log = logging.getLogger(__name__)

# The field's metrics (mAP; CP, CR, CF1, OP, OR, OF1 at the threshold, as ML-GCN and ASL report them) beside
# samples-F1: all in jobs.csv and settings.csv; mAP, CF1 and OF1 in report.md's tables.
FIELD = tuple(f"val_{name}" for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"))
METRICS = ("train_loss", "val_loss", "val_samples_f1", *FIELD)
SHOWN = ("train_loss", "val_loss", "val_samples_f1", "val_mAP", "val_CF1", "val_OF1")
METRIC_TITLES = {
    "train_loss": "train loss",
    "val_loss": "val loss",
    "val_samples_f1": "val samples-F1",
    **{m: f"val {m.removeprefix('val_')}" for m in FIELD},
}
FINISHED, FAILED, UNFINISHED, NOT_STARTED = "finished", "failed", "unfinished", "not started"
# A metrics.json that is not what train.py writes (empty, an F1 of 7.5): listed with the failed jobs, never
# averaged or bolded.
INVALID = "invalid results"
# A finished run's score: a classifier's val samples-F1, or a captioner's CIDEr-D (model=captioner).
_SCORES = ("val_samples_f1", "val_CIDEr-D")
_FRACTIONS = ("val_samples_f1", *FIELD)  # F1, precision, recall, mAP: within [0, 1]
_CAPTION_FRACTIONS = ("val_BLEU-1", "val_BLEU-2", "val_BLEU-3", "val_BLEU-4", "val_ROUGE-L")
_SWEEP_MARKERS = ("multirun.yaml", PLAN_FILE)  # what Hydra and the mlcap sweeper write into a sweep folder
_SEED_KEY = "seed"
# Keys whose runs are repeats of one setting, aggregated as mean ± std (k-fold cross-validation: the folds).
_REPEAT_KEYS = (_SEED_KEY, "data.fold")
_ABSENT = "<absent>"


@dataclass
class JobRecord:
    """One job of a sweep as found on disk (or only in the sweep plan)."""

    name: str
    status: str
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    path: Path | None = None


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # OmegaConf/yaml raise many types; name the file instead
        raise ValueError(f"{path}: cannot read it as YAML ({err}); fix or delete the file") from err


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> {"model.hidden_dim": 128, ...}; lists become JSON text so values stay comparable."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}
    return {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flat.items()}


def _job_num(job_dir: Path) -> int | None:
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    hydra_cfg = _read_yaml(hydra_yaml)  # names the file if it is broken
    if not isinstance(hydra_cfg, dict):
        return None
    num = OmegaConf.select(OmegaConf.create(hydra_cfg), "hydra.job.num", default=None)
    return num if isinstance(num, int) else None


def _load_job(job_dir: Path, sweep_dir: Path) -> JobRecord:
    config = _read_yaml(job_dir / ".hydra" / "config.yaml")
    if not isinstance(config, dict):
        raise ValueError(f"{job_dir / '.hydra' / 'config.yaml'}: expected a mapping; fix or delete the file")
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in _read_yaml(overrides_path) or []] if overrides_path.is_file() else []
    record = JobRecord(
        name=job_dir.relative_to(sweep_dir).as_posix() or ".",
        status=UNFINISHED,
        overrides=overrides,
        config=_flatten(config),
        path=job_dir,
    )
    if (job_dir / METRICS_FILE).is_file():
        metrics = read_json(job_dir / METRICS_FILE)
        problem = _metrics_problem(metrics)
        if problem:
            record.status = INVALID
            record.error = (
                f"{job_dir / METRICS_FILE}: {problem}; not written by a finished mlcap run? Delete it and re-run "
                "the sweep's command to run this job again"
            )
        else:
            record.status = FINISHED
            record.metrics = metrics
    elif (job_dir / FAILED_FILE).is_file():
        record.status = FAILED
        failure = read_json(job_dir / FAILED_FILE)
        record.error = str(failure.get("error", "unknown error (no 'error' in failed.json)"))
    else:
        resumable = (job_dir / LAST_CHECKPOINT).is_file()
        checkpoint = "resumes from checkpoints/last.ckpt" if resumable else "no checkpoint yet"
        record.error = f"interrupted or running; {checkpoint}"
    return record


def _metrics_problem(metrics: dict[str, Any]) -> str | None:
    """Why a metrics.json cannot be a finished run's results (keys missing, a value out of range), or None."""
    score = next((key for key in _SCORES if key in metrics), None)
    if score is None:
        return f"no {' or '.join(_SCORES)} in it"
    fractions = (*_FRACTIONS, *_CAPTION_FRACTIONS)
    for key in (
        score,
        *fractions,
        *METRICS,
        "model_size_mb",
        "wall_time_s",
    ):  # the score first: likelier fault
        value = metrics.get(key)
        if value is None and key != score:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key} is {value!r}, not a finite number"
        if key in fractions and not 0.0 <= value <= 1.0:
            return f"{key} is {value!r}, outside [0, 1]"
        if key in ("model_size_mb", "wall_time_s", "val_CIDEr-D") and value < 0:
            return f"{key} is {value!r}, below 0"
    return None


def _check_one_sweep(sweep_dir: Path) -> None:
    """A report is of one sweep: a folder holding several (multirun/ itself) would mix unrelated jobs."""
    sweeps = sorted({p.parent for marker in _SWEEP_MARKERS for p in sweep_dir.glob(f"**/{marker}")})
    others = [s for s in sweeps if s != sweep_dir]
    if others:
        shown = ", ".join(str(s) for s in sweeps[:10]) + (
            f" and {len(sweeps) - 10} more" if len(sweeps) > 10 else ""
        )
        raise ValueError(
            f"{sweep_dir} holds {len(sweeps)} sweeps ({shown}); a report is of one sweep: pass one of them, "
            f"e.g. python -m mlcap.report {others[0]}"
        )


def load_jobs(sweep_dir: str | Path) -> list[JobRecord]:
    """Every job under `sweep_dir`, in sweep order; jobs only in the sweep plan are 'not started'."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder; pass the sweep folder (e.g. multirun/table1)")
    _check_one_sweep(sweep_dir)
    job_dirs = sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml")})
    jobs = {record.name: record for record in (_load_job(d, sweep_dir) for d in job_dirs)}
    plan_path = sweep_dir / PLAN_FILE
    plan = read_json(plan_path).get("jobs") if plan_path.is_file() else []
    if not isinstance(plan, list) or not all(
        isinstance(e, dict) and {"name", "overrides"} <= e.keys() for e in plan
    ):
        raise ValueError(
            f"{plan_path}: 'jobs' must be a list of {{name, overrides}} entries as the mlcap sweeper "
            "writes them; delete the file to report only the job folders"
        )
    plan_order: dict[str, int] = {}
    for i, entry in enumerate(plan):
        plan_order.setdefault(entry["name"], i)
    for entry in plan:
        if entry["name"] not in jobs:
            jobs[entry["name"]] = JobRecord(
                name=entry["name"], status=NOT_STARTED, overrides=entry["overrides"]
            )
    nums = {name: _job_num(r.path) if r.path else None for name, r in jobs.items()}

    def order(name: str) -> tuple[float, float, str]:
        record = jobs[name]
        num = nums[name]
        return (plan_order.get(record.name, float("inf")), float("inf") if num is None else num, name)

    return [jobs[name] for name in sorted(jobs, key=order)]


def varied_keys(jobs: Sequence[JobRecord]) -> list[str]:
    """Config keys whose values differ between jobs (seed and data.fold excluded: the statistics run over them)."""
    configs = [j.config for j in jobs if j.config]
    keys: dict[str, None] = {}
    for config in configs:
        keys.update(dict.fromkeys(config))
    return [
        key
        for key in keys
        if key not in _REPEAT_KEYS
        and len({json.dumps(c.get(key, _ABSENT), default=str) for c in configs}) > 1
    ]


def _setting_key(config: dict[str, Any], keys: Sequence[str]) -> str:
    return json.dumps([config.get(k, _ABSENT) for k in keys], default=str)


def jobs_frame(jobs: Sequence[JobRecord], keys: Sequence[str]) -> pd.DataFrame:
    """One row per job: name, status, varied values, seed, metrics, error."""
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status}
        row.update({k: job.config.get(k) for k in keys})
        row["seed"] = job.config.get(_SEED_KEY)
        for m in (*METRICS, "model_size_mb", "under_100mb", "wall_time_s", "epochs", "best_epoch"):
            row[m] = job.metrics.get(m)
        row["error"] = job.error
        row["overrides"] = " ".join(job.overrides)
        row["setting"] = _setting_key(job.config, keys) if job.config else None
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


def _base_values(settings: pd.DataFrame, keys: Sequence[str]) -> dict[str, Any]:
    """The grid's centre: per key the value most settings share (the base appears once per other axis)."""
    base = {}
    for key in keys:
        counts = settings[key].map(lambda v: json.dumps(v, default=str)).value_counts(sort=True)
        base[key] = json.loads(counts.index[0])
    return base


def _row_matches(row: pd.Series, values: dict[str, Any]) -> bool:
    return all(json.dumps(row[k], default=str) == json.dumps(v, default=str) for k, v in values.items())


def _sorted_by(table: pd.DataFrame, key: str) -> pd.DataFrame:
    try:
        return table.sort_values(key, kind="stable")
    except TypeError:  # mixed types (e.g. null and numbers): keep sweep order
        return table


def one_at_a_time_tables(settings: pd.DataFrame, keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per varied key, the settings that differ from the base in that key only (base row included)."""
    base = _base_values(settings, keys)
    tables = {}
    for key in keys:
        others = {k: v for k, v in base.items() if k != key}
        table = settings[settings.apply(lambda row, o=others: _row_matches(row, o), axis=1)].copy()
        table.insert(len(keys), "base", table[key].map(lambda v, b=base[key]: _same_value(v, b)))
        tables[key] = _sorted_by(table, key).reset_index(drop=True)
    return tables


def _same_value(a: Any, b: Any) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str)


# ------------------------------------------------------------------------------------------ formatting
def _mean_std(mean: float, std: float, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "—"
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _duration(seconds: float) -> str:
    if pd.isna(seconds):
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _size(mb: float, over: bool) -> str:
    if pd.isna(mb):
        return "—"
    return f"{mb:.1f} ⚠ over {SIZE_LIMIT_MB:.0f} MB" if over else f"{mb:.1f}"


def _display(table: pd.DataFrame, keys: Sequence[str], best_f1: float | None) -> pd.DataFrame:
    """Settings rows as Markdown-ready text; the best mean val samples-F1 in bold."""
    shown = pd.DataFrame({k: table[k].map(_value_text) for k in keys})
    if "base" in table:
        shown["base"] = table["base"].map(lambda b: "✓" if b else "")
    counts = []
    for _, row in table.iterrows():
        extra = [f"{row[s]} {s}" for s in ("failed", "unfinished") if row[s]]
        counts.append(f"{row['n']}" + (f" (+{', '.join(extra)})" if extra else ""))
    shown["n"] = counts
    for m in SHOWN:
        shown[METRIC_TITLES[m]] = [
            _mean_std(r[f"{m}_mean"], r[f"{m}_std"], r["n"]) for _, r in table.iterrows()
        ]
    if best_f1 is not None:
        is_best = table["val_samples_f1_mean"] == best_f1
        col = METRIC_TITLES["val_samples_f1"]
        shown.loc[is_best, col] = shown.loc[is_best, col].map(lambda t: f"**{t}**")
    shown[f"size MB (limit {SIZE_LIMIT_MB:.0f})"] = [
        _size(r["model_size_mb"], r["over_size_limit"]) for _, r in table.iterrows()
    ]
    shown["run time"] = table["wall_time_s_mean"].map(_duration)
    return shown


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


# ---------------------------------------------------------------------------------------------- plots
def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _plot_f1(
    table: pd.DataFrame,
    key: str | None,
    keys: Sequence[str],
    path: Path,
    paper: Sequence[tuple[dict[str, Any], float]] = (),
) -> Path | None:
    """val samples-F1 (mean, std error bars) against one key, or per setting when several keys vary; the
    study's figure for a setting (`paper`: (setting, F1) pairs) as a red cross beside ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table[table["n"] > 0]
    if done.empty:
        return None
    mean, err = done["val_samples_f1_mean"], done["val_samples_f1_std"].fillna(0.0)
    title = "val samples-F1 (mean ± std over seeds)"
    if key is not None and _is_numeric(list(done[key])):
        fig, ax = plt.subplots(figsize=(6, 4))
        ordered = done.sort_values(key)
        x = ordered[key].astype(float)
        ax.errorbar(
            x, ordered["val_samples_f1_mean"], yerr=err[ordered.index], marker="o", capsize=4, label="ours"
        )
        _mark_paper(ax, [(float(row[key]), _paper_f1(row, keys, paper)) for _, row in ordered.iterrows()])
        if (x > 0).all() and x.max() / x.min() >= 10:
            ax.set_xscale("log")
        ax.set_xticks(list(x), [_value_text(v) for v in ordered[key]])
        ax.minorticks_off()
        ax.set_xlabel(key)
        ax.set_ylabel(title)
    else:  # categorical values or whole settings: horizontal bars leave room for long labels
        shown_keys = [key] if key is not None else list(keys)
        labels = [", ".join(f"{k}={_value_text(row[k])}" for k in shown_keys) for _, row in done.iterrows()]
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(done)))
        ax.barh(range(len(done)), mean, xerr=err, capsize=4, color="tab:blue", label="ours")
        _mark_paper(ax, [(_paper_f1(row, keys, paper), i) for i, (_, row) in enumerate(done.iterrows())])
        ax.set_yticks(range(len(done)), labels, fontsize=8)
        ax.invert_yaxis()  # first setting on top, as in the tables
        ax.set_xlabel(title)
    ax.grid(alpha=0.3)
    if paper:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _mark_paper(ax: Any, points: Sequence[tuple[float | None, float | None]]) -> None:
    shown = [(x, y) for x, y in points if x is not None and y is not None]
    if shown:
        xs, ys = zip(*shown, strict=True)
        ax.scatter(xs, ys, marker="x", color="tab:red", s=60, zorder=3, label="the paper")


def _plot_per_class(per_class: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = per_class[~per_class.index.astype(str).str.contains("avg")]
    ax = classes[["precision", "recall", "f1"]].plot.bar(figsize=(9, 4), width=0.8)
    ax.set_xlabel("label")
    ax.set_ylim(0, 1.15)
    ax.legend(ncols=3, loc="upper center")
    ax.set_title("best run: per-class precision / recall / F1 (validation split)")
    ax.grid(alpha=0.3, axis="y")
    fig = ax.get_figure()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- report
def _plan_axes(sweep_dir: Path) -> list[str]:
    """The one-at-a-time axes the sweeper planned (empty for point lists and plain multiruns)."""
    plan_path = sweep_dir / PLAN_FILE
    return [str(a) for a in read_json(plan_path).get("axes") or []] if plan_path.is_file() else []


def _common_overrides(jobs: Sequence[JobRecord]) -> list[str]:
    with_overrides = [j.overrides for j in jobs if j.overrides]
    if not with_overrides:
        return []
    return [o for o in with_overrides[0] if all(o in other for other in with_overrides[1:])]


def write_report(sweep_dir: str | Path, layout: str = "auto", paper: Mapping[str, Any] | None = None) -> Path:
    """Write report.md, CSVs and PNGs into `sweep_dir`; return the report path.

    layout: "flat" (one table), "one-at-a-time" (one table per varied key) or "auto" (one-at-a-time when the
    sweep was planned with axes, e.g. sweep=table4). paper: the study's figures (conf/paper/*.yaml: tables and
    its best model) to show beside ours, as hydra.callbacks.report.paper holds them ({} for none); by default
    those the sweep was run with (its multirun.yaml), plus any its sweep config has gained since.
    """
    if layout not in ("auto", "flat", "one-at-a-time"):
        raise ValueError(f"layout must be auto, flat or one-at-a-time, got {layout!r}")
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir} holds no job folders (no */.hydra/config.yaml); pass the folder of a multirun, "
            "e.g. multirun/table1"
        )
    axes = _plan_axes(sweep_dir)
    keys = _ordered_keys(jobs, axes)
    frame, settings = _write_tables(sweep_dir, jobs, keys)
    one_at_a_time = layout == "one-at-a-time" or (layout == "auto" and bool(axes))
    figures = [dict(f) for f in (_saved_paper(sweep_dir) if paper is None else paper).values()]
    paper_tables = [f for f in figures if not _is_best_model(f)]
    paper_best = next((f for f in figures if _is_best_model(f)), None)
    common = _common_overrides(jobs)
    lines = _report_header(sweep_dir, jobs, frame, keys, common)
    lines += search_sections(sweep_dir)  # an Optuna search's trials, best command and plots (else nothing)
    lines += _results_sections(sweep_dir, jobs, settings, keys, paper_tables, one_at_a_time)
    lines += caption_sections(jobs)  # model=captioner: caption metrics beside the baselines (else nothing)
    lines += _paper_best_section(paper_best, jobs, keys) if paper_best else []
    lines += _best_run_section(jobs, sweep_dir, common)
    lines += _problem_section(jobs, common)
    report = sweep_dir / "report.md"
    write_atomic(report, "\n".join(lines).rstrip() + "\n")
    return report


def _ordered_keys(jobs: Sequence[JobRecord], axes: Sequence[str]) -> list[str]:
    """The varied keys in the sweep's axis order first, so tables and plots follow the plan."""
    keys = varied_keys(jobs)
    return [k for k in axes if k in keys] + [k for k in keys if k not in axes]


def _write_tables(
    sweep_dir: Path, jobs: Sequence[JobRecord], keys: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """jobs.csv and settings.csv, written for other tools and returned for the report's own tables."""
    frame = jobs_frame(jobs, keys)
    write_atomic(sweep_dir / "jobs.csv", frame.drop(columns=["setting"]).to_csv(index=False))
    settings = settings_table(jobs, keys)
    if not settings.empty:
        write_atomic(sweep_dir / "settings.csv", settings.to_csv(index=False))
    return frame, settings


def _report_header(
    sweep_dir: Path,
    jobs: Sequence[JobRecord],
    frame: pd.DataFrame,
    keys: Sequence[str],
    common: Sequence[str],
) -> list[str]:
    """Title, job counts per state, varied keys, seeds and common overrides: what the sweep was, at a glance."""
    counts = frame["status"].value_counts()
    status_text = ", ".join(
        f"{counts[s]} {s}" for s in (FINISHED, FAILED, INVALID, UNFINISHED, NOT_STARTED) if s in counts
    )
    seeds = sorted({str(s) for s in frame["seed"].dropna()})
    return [
        f"# Sweep report: `{sweep_dir}`",
        "",
        f"{len(jobs)} jobs: {status_text}. Varied keys: {', '.join(f'`{k}`' for k in keys) or 'none'}; "
        f"seeds: {', '.join(seeds) or '—'}.",
        "",
        f"Overrides common to all jobs: `{' '.join(common) or '(none)'}`.",
        "",
        "Metrics are mean ± sample std over the finished seeds (and k-fold folds) of each setting (n); losses and F1 are those "
        "of the best epoch (highest val samples-F1). Size is the model's inference size against the "
        f"{SIZE_LIMIT_MB:.0f} MB limit; run time is the mean wall time per job.",
        "",
    ]


def _results_sections(
    sweep_dir: Path,
    jobs: Sequence[JobRecord],
    settings: pd.DataFrame,
    keys: Sequence[str],
    paper_tables: Sequence[Mapping[str, Any]],
    one_at_a_time: bool,
) -> list[str]:
    """The paper beside ours, then our results in the chosen layout and their plots (written alongside)."""
    if settings.empty:
        return ["No job has a saved config yet.", ""]
    finished = settings[settings["n"] > 0]
    best_f1 = float(finished["val_samples_f1_mean"].max()) if not finished.empty else None
    base = _base_values(settings, keys)
    common_config = {k: v for k, v in jobs[0].config.items() if k not in keys} if jobs[0].config else {}
    lines = _paper_sections(paper_tables, settings, keys, {**common_config, **base}) if paper_tables else []
    if one_at_a_time and keys:
        results, plots = _one_at_a_time_results(sweep_dir, settings, keys, base, best_f1, paper_tables)
    else:
        marks = _paper_marks(paper_tables, keys, {**common_config, **base})
        results, plots = _flat_results(sweep_dir, settings, keys, best_f1, marks)
    lines += results
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return lines


def _one_at_a_time_results(
    sweep_dir: Path,
    settings: pd.DataFrame,
    keys: Sequence[str],
    base: Mapping[str, Any],
    best_f1: float | None,
    paper_tables: Sequence[Mapping[str, Any]],
) -> tuple[list[str], list[Path]]:
    """One table, CSV and plot per varied key, the others at the base point: a grid read one axis at a time."""
    lines = [
        "## Results, one key at a time",
        "",
        "Each table varies one key; the others keep the base point's values (✓ = base point: "
        + ", ".join(f"`{k}={_value_text(v)}`" for k, v in base.items())
        + ").",
        "",
    ]
    plots: list[Path] = []
    for key, table in one_at_a_time_tables(settings, keys).items():
        write_atomic(sweep_dir / f"settings_{_slug(key)}.csv", table.to_csv(index=False))
        lines += [f"### `{key}`", "", _markdown(_display(table, [key], best_f1))]
        marks = _paper_marks(paper_tables, [key])
        plot = _plot_f1(table, key, [key], sweep_dir / f"val_samples_f1_by_{_slug(key)}.png", marks)
        plots += [plot] if plot else []
    return lines, plots


def _flat_results(
    sweep_dir: Path,
    settings: pd.DataFrame,
    keys: Sequence[str],
    best_f1: float | None,
    marks: Sequence[tuple[dict[str, Any], float]],
) -> tuple[list[str], list[Path]]:
    """One table of every setting and one plot: by the key when one varies, else by whole setting."""
    lines = ["## Results", "", _markdown(_display(settings, keys, best_f1))]
    if len(keys) == 1:
        path = sweep_dir / f"val_samples_f1_by_{_slug(keys[0])}.png"
        plot = _plot_f1(settings, keys[0], keys, path, marks)
    else:
        plot = _plot_f1(settings, None, keys, sweep_dir / "val_samples_f1_by_setting.png", marks)
    return lines, [plot] if plot else []


# ---------------------------------------------------------------------------------------- the paper
_PAPER_DEFAULT = re.compile(r"^/?paper/(?P<file>[\w.-]+)@hydra\.callbacks\.report\.paper\.(?P<key>[\w-]+)$")


def sweep_paper(sweep: str, conf_dir: Path = CONF_DIR) -> dict[str, dict[str, Any]]:
    """The study's figures that `sweep=<sweep>` composes into hydra.callbacks.report.paper, read from conf/ as
    it is now: conf/sweep/<sweep>.yaml's `/paper/<file>@hydra.callbacks.report.paper.<key>` defaults."""
    path = conf_dir / "sweep" / f"{sweep}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "sweep").glob("*.yaml"))
        raise ValueError(f"no sweep config {path}; the paper's figures come from one of: {', '.join(known)}")
    sweep_config = _read_yaml(path)
    defaults = (sweep_config.get("defaults") or []) if isinstance(sweep_config, dict) else []
    matches = [_PAPER_DEFAULT.match(entry) for entry in defaults if isinstance(entry, str)]
    return {m["key"]: _read_yaml(conf_dir / "paper" / f"{m['file']}.yaml") for m in matches if m}


def _saved_paper(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The study's figures the sweep was run with (hydra.callbacks.report.paper in its multirun.yaml), plus
    those its sweep config (hydra.runtime.choices.sweep) carries now and it lacked: figures added since."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    saved = OmegaConf.create(_read_yaml(path))
    node = OmegaConf.select(saved, "hydra.callbacks.report.paper", default=None)
    paper = dict(OmegaConf.to_container(node)) if node else {}  # type: ignore[arg-type]
    choice = OmegaConf.select(saved, "hydra.runtime.choices.sweep", default=None)
    if isinstance(choice, str) and (CONF_DIR / "sweep" / f"{choice}.yaml").is_file():
        paper = {**sweep_paper(choice), **paper}  # the saved figures win; the order is the config's
    return paper


def _is_best_model(figures: Mapping[str, Any]) -> bool:
    """conf/paper/best.yaml's shape (the study's best model), as against a table's (title and rows)."""
    return "averages" in figures or "per_class" in figures


def _target(
    setting: Mapping[str, Any], keys: Sequence[str], base: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The values of our varied keys at which a paper row was measured, or None if our sweep cannot have it
    (it sets a key that our jobs all hold at another value)."""
    for key, value in setting.items():
        if key not in keys and key in base and not _same_value(base[key], value):
            return None
    return {key: setting.get(key, base.get(key)) for key in keys}


def _matching(settings: pd.DataFrame, target: Mapping[str, Any] | None) -> pd.Series | None:
    if target is None:
        return None
    rows = settings[settings.apply(lambda row: _row_matches(row, dict(target)), axis=1)]
    return rows.iloc[0] if len(rows) else None


def _paper_marks(
    tables: Sequence[Mapping[str, Any]], keys: Sequence[str], base: Mapping[str, Any] | None = None
) -> list[tuple[dict[str, Any], float]]:
    """(our varied values, the paper's F1) for the plots: with `base`, every paper row placed at the sweep's
    base; without, only the rows that set exactly `keys` (a one-at-a-time plot of one key)."""
    marks = []
    for table in tables:
        for row in table.get("rows", []):
            setting = dict(row["setting"])
            target = (
                _target(setting, keys, base)
                if base is not None
                else (setting if set(setting) == set(keys) else None)
            )
            if target is not None and row.get("val_samples_f1") is not None:
                marks.append((target, float(row["val_samples_f1"])))
    return marks


def _paper_f1(
    row: pd.Series, keys: Sequence[str], marks: Sequence[tuple[dict[str, Any], float]]
) -> float | None:
    for target, f1 in marks:
        if all(_same_value(row[k], target[k]) for k in keys):
            return f1
    return None


def _paper_cells(ours: pd.Series | None, prow: Mapping[str, Any], metric: str, std: bool = True) -> list[str]:
    """paper | ours (| ours - paper for F1) for one metric; '—' where either side has no figure."""
    paper = prow.get(metric)
    n = int(ours["n"]) if ours is not None else 0
    mine = ours.get(f"{metric}_mean", ours.get(metric)) if ours is not None and n else None
    cells = [f"{paper:.4g}" if paper is not None else "—"]
    if metric == "val_samples_f1":
        cells.append(_mean_std(mine, ours["val_samples_f1_std"], n) if mine is not None else "not run")
        cells.append(f"{mine - paper:+.4f}" if mine is not None and paper is not None else "—")
    else:
        cells.append(f"{mine:.4g}" if mine is not None and not pd.isna(mine) else "—")
    return cells


def _paper_sections(
    tables: Sequence[Mapping[str, Any]], settings: pd.DataFrame, keys: Sequence[str], base: Mapping[str, Any]
) -> list[str]:
    """One section per table of the study: the paper's figures, ours (mean ± std over seeds), the difference."""
    lines = [
        "## The study's tables: the paper's figures beside ours",
        "",
        "The paper's columns are the study's own reported figures (its data, its ResNeXt-50 backbone, one run "
        "each), whatever data this sweep ran on; ours are mean ± std over this sweep's seeds (n).",
        "",
    ]
    for table in tables:
        rows = []
        for prow in table.get("rows", []):
            ours = _matching(settings, _target(dict(prow["setting"]), keys, base))
            setting = " ".join(f"{k}={_value_text(v)}" for k, v in prow["setting"].items())
            rows.append(
                [
                    f"{prow.get('name', setting)} (`{setting}`)",
                    str(int(ours["n"])) if ours is not None else "0",
                ]
                + _paper_cells(ours, prow, "val_samples_f1")
                + _paper_cells(ours, prow, "val_loss")
                + _paper_cells(ours, prow, "train_loss")
                + _paper_cells(ours, prow, "model_size_mb")
            )
        columns = [
            "setting",
            "n",
            "F1: paper",
            "F1: ours",
            "ours − paper",
            "val loss: paper",
            "val loss: ours",
            "train loss: paper",
            "train loss: ours",
            "MB: paper",
            "MB: ours",
        ]
        lines += [f"### {table.get('title', 'Table')}", "", _markdown(pd.DataFrame(rows, columns=columns))]
    return lines


def _best_setting_jobs(
    jobs: Sequence[JobRecord], keys: Sequence[str], setting: Mapping[str, Any]
) -> tuple[list[JobRecord], bool]:
    """The finished jobs of the setting that holds the paper's best model's values (`setting`, its Table 5),
    so the comparison is like for like; without one, those of the highest mean val samples-F1. The flag says
    which it is."""
    groups: dict[str, list[JobRecord]] = {}
    for job in jobs:
        if job.status == FINISHED and job.config and job.metrics.get("val_samples_f1") is not None:
            groups.setdefault(_setting_key(job.config, keys), []).append(job)
    if not groups:
        return [], False
    for group in groups.values():
        config = group[0].config
        if all(_same_value(config[k], v) for k, v in setting.items() if k in config):
            return group, True
    best = max(groups.values(), key=lambda g: sum(float(j.metrics["val_samples_f1"]) for j in g) / len(g))
    return best, False


def _paper_figure(value: float) -> str:
    """A figure of the paper as it printed it: two decimals at least (0.90, 0.00), more where it gave more."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def _ours_vs_paper(ours: Sequence[float], paper: float | None, missing: str = "—") -> list[str]:
    """paper | ours (mean ± std over seeds) | ours − paper, as the tables' sections show them."""
    values = pd.Series(ours, dtype=float).dropna()
    mean, n = values.mean(), len(values)
    return [
        _paper_figure(paper) if paper is not None else "—",
        _mean_std(mean, values.std(), n) if n else missing,
        f"{mean - paper:+.4f}" if n and paper is not None else "—",
    ]


def _average_of(job: JobRecord, per_class: pd.DataFrame | None, average: str, metric: str) -> float | None:
    """One job's micro/macro/weighted/samples average: metrics.json's val_<average>_<metric>, else the
    '<average> avg' row of its per_class.csv."""
    value = job.metrics.get(f"val_{average}_{metric}")
    if value is None and per_class is not None and f"{average} avg" in per_class.index:
        value = per_class.loc[f"{average} avg", metric]
    return None if value is None else float(value)


def _setting_text(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={_value_text(config.get(k))}" for k in keys) or "the only setting"


def _paper_best_intro(
    paper: Mapping[str, Any], ours: Sequence[JobRecord], keys: Sequence[str], n_per_class: int, same: bool
) -> str:
    """What the two sides are: the paper's claims, and which of our settings (how it differs from Table 5)."""
    config = ours[0].config
    seeds = " ".join(str(j.config.get(_SEED_KEY)) for j in ours)
    partial = (
        f", per-class figures over the {n_per_class} with a per_class.csv" if n_per_class < len(ours) else ""
    )
    differs = [
        f"{k}={_value_text(config[k])} (the paper's {_value_text(v)})"
        for k, v in (paper.get("setting") or {}).items()
        if k in config and not _same_value(config[k], v)
    ]
    table5 = (
        f"It differs from the paper's best model (its Table 5) in `{'`, `'.join(differs)}`."
        if differs
        else "It holds the paper's best model's values (its Table 5) where our config has the key."
    )
    return (
        "The paper's columns are the study's own claims for its best model (its Tables 6-7 and the text after "
        "them: its data, its ResNeXt-50 backbone, one run), whatever data this sweep ran on. "
        f"Ours are this sweep's {'runs of the same setting' if same else 'best setting by mean val samples-F1'}, "
        f"`{_setting_text(config, keys)}`: mean ± "
        f"sample std over its {len(ours)} finished seed(s) ({seeds}){partial}. {table5}"
    )


def _paper_best_section(
    paper: Mapping[str, Any], jobs: Sequence[JobRecord], keys: Sequence[str]
) -> list[str]:
    """The study's best model (conf/paper/best.yaml) beside this sweep's best setting: the four averages of
    precision/recall/F1, per-class F1 by label id, run time and size; ours as mean ± std over its seeds."""
    lines = ["## The study's best model beside ours", ""]
    ours, same_as_paper = _best_setting_jobs(jobs, keys, paper.get("setting") or {})
    if not ours:
        return lines + ["No finished job yet.", ""]
    per_class = {job.name: _read_per_class(job) for job in ours}
    with_table = [t for t in per_class.values() if t is not None]
    lines += [_paper_best_intro(paper, ours, keys, len(with_table), same_as_paper), ""]
    rows = [
        [f"{average} {metric}"]
        + _ours_vs_paper(
            [_average_of(j, per_class[j.name], average, metric) for j in ours],
            (paper.get("averages") or {}).get(average, {}).get(metric),
        )
        for average in ("micro", "macro", "weighted", "samples")
        for metric in ("precision", "recall", "f1")
    ]
    lines += [
        "### Precision / recall / F1 averages (validation split; the paper's Table 6)",
        "",
        _markdown(pd.DataFrame(rows, columns=["average", "paper", "ours", "ours − paper"])),
    ]
    lines += _paper_per_class(paper.get("per_class") or [], with_table)
    times = [float(j.metrics["wall_time_s"]) for j in ours if j.metrics.get("wall_time_s") is not None]
    sizes = [float(j.metrics["model_size_mb"]) for j in ours if j.metrics.get("model_size_mb") is not None]
    paper_time, paper_size = paper.get("wall_time_s"), paper.get("model_size_mb")
    time = sum(times) / len(times) if times else None
    size = max(sizes) if sizes else None  # one model: the same size on every seed
    rows = [
        [
            "run time (wall, mean per run)",
            _duration(paper_time) if paper_time is not None else "—",
            _duration(time) if time is not None else "—",
            _signed_duration(time - paper_time) if time is not None and paper_time is not None else "—",
        ],
        [
            f"model size MB (limit {SIZE_LIMIT_MB:.0f})",
            _paper_figure(paper_size) if paper_size is not None else "—",
            _size(size, size > SIZE_LIMIT_MB) if size is not None else "—",
            f"{size - paper_size:+.1f}" if size is not None and paper_size is not None else "—",
        ],
    ]
    if paper.get("kaggle_f1") is not None:
        kaggle = _paper_figure(paper["kaggle_f1"])
        rows.append(["Kaggle F1 (public 20% of the test set)", kaggle, "— (test labels are Kaggle's)", "—"])
    lines += [
        "### Run time and size",
        "",
        _markdown(pd.DataFrame(rows, columns=["", "paper", "ours", "ours − paper"])),
    ]
    return lines


def _signed_duration(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + _duration(abs(seconds))


def _paper_per_class(paper_rows: Sequence[Mapping[str, Any]], ours: Sequence[pd.DataFrame]) -> list[str]:
    """Per-class F1 by label id: the paper's (its Table 7), ours (mean ± std over seeds) and the difference;
    a label with no positives in our validation split has no F1 of ours to compare."""
    paper_f1 = {str(row["label"]): row.get("f1") for row in paper_rows}
    ours_labels = [str(label) for t in ours for label in t.index if "avg" not in str(label)]
    rows = []
    for label in dict.fromkeys([*paper_f1, *ours_labels]):
        present = [t for t in ours if label in t.index]
        support = sorted({int(t.loc[label, "support"]) for t in present})
        if not present:
            cells = _ours_vs_paper([], paper_f1.get(label), missing="not in our data")
        elif support == [0]:
            cells = _ours_vs_paper([], paper_f1.get(label), missing="no positives")
        else:
            cells = _ours_vs_paper([float(t.loc[label, "f1"]) for t in present], paper_f1.get(label))
        rows.append(
            [label, "–".join(dict.fromkeys(str(s) for s in support[:1] + support[-1:])) or "—", *cells]
        )
    columns = ["label", "support (ours)", "F1: paper", "F1: ours", "ours − paper"]
    return [
        "### Per-class F1 (validation split; the paper's Table 7)",
        "",
        _markdown(pd.DataFrame(rows, columns=columns)),
    ]


def _read_per_class(job: JobRecord) -> pd.DataFrame | None:
    """A finished job's per_class.csv (labels and averages as rows; the index as text), None if it has none."""
    path = job.path / "per_class.csv" if job.path is not None else None
    if path is None or not path.is_file():
        return None
    per_class = pd.read_csv(path, index_col=0)
    missing = {"precision", "recall", "f1", "support"} - set(per_class.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; re-run that job's training")
    per_class.index = per_class.index.astype(str)
    return per_class


def _own_overrides(job: JobRecord, common: Sequence[str]) -> str:
    return " ".join(o for o in job.overrides if o not in common) or "(only the common ones)"


def _best_run_section(jobs: Sequence[JobRecord], sweep_dir: Path, common: Sequence[str]) -> list[str]:
    done = [j for j in jobs if j.status == FINISHED and j.metrics.get("val_samples_f1") is not None]
    if not done:
        return ["## Best run", "", "No finished job yet.", ""]
    best = max(done, key=lambda j: float(j.metrics["val_samples_f1"]))
    lines = [
        "## Best run",
        "",
        f"`{best.name}`: val samples-F1 {float(best.metrics['val_samples_f1']):.4f}, "
        f"overrides besides the common ones: `{_own_overrides(best, common)}`.",
        "",
    ]
    per_class = _read_per_class(best)
    if per_class is None:
        return lines + [f"(no per_class.csv in {best.path})", ""]
    assert best.path is not None
    write_atomic(sweep_dir / "best_per_class.csv", (best.path / "per_class.csv").read_text())
    plot = _plot_per_class(per_class, sweep_dir / "best_per_class.png")
    lines += [
        "Per-class precision / recall / F1 on the validation split (`best_per_class.csv`):",
        "",
        per_class[["precision", "recall", "f1", "support"]].to_markdown(
            floatfmt=("", ".3f", ".3f", ".3f", ".0f")
        )
        + "\n",
        f"![best run per class]({plot.name})",
        "",
    ]
    return lines


def _one_line(text: str, limit: int = 300) -> str:
    """An error message on one table row: whitespace collapsed, cut at `limit` characters."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _problem_section(jobs: Sequence[JobRecord], common: Sequence[str]) -> list[str]:
    lines = []
    for title, statuses in (
        ("Failed jobs (and invalid results)", (FAILED, INVALID)),
        ("Unfinished jobs (re-run the same command to resume them)", (UNFINISHED, NOT_STARTED)),
    ):
        rows = [
            {
                "job": j.name,
                "status": j.status,
                "overrides": _own_overrides(j, common),
                "reason": _one_line(j.error),
            }
            for j in jobs
            if j.status in statuses
        ]
        if rows:
            lines += [f"## {title}", "", _markdown(pd.DataFrame(rows))]
    return lines


class ReportCallback(Callback):
    """Hydra callback (hydra.callbacks.report) that writes the sweep's report when a multirun ends."""

    def __init__(self, layout: str = "auto", paper: Mapping[str, Any] | None = None) -> None:
        self.layout = layout
        # The study's tables (conf/paper/*.yaml), composed in by the table sweeps.
        self.paper = OmegaConf.to_container(paper) if OmegaConf.is_config(paper) else paper

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.runtime.choices.get("sweep") is None:
            return
        log.warning(
            "a sweep config (sweep=...) only takes effect with -m: this runs a single job with the base "
            "config. Use `python train.py -m sweep=...`."
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the report; exit non-zero (after it) when a job did not finish or the report failed.

        Hydra turns a callback's exceptions into warnings, so the exit code is set through SystemExit.
        """
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir, layout=self.layout, paper=self.paper)
            jobs = load_jobs(sweep_dir)
        except Exception as err:
            log.exception("could not write the sweep report")
            raise SystemExit(f"error: no report ({err}); run `python -m mlcap.report {sweep_dir}`") from None
        log.info("sweep report: %s", report)
        problems = [j for j in jobs if j.status != FINISHED]
        if problems:
            raise SystemExit(
                f"error: {len(problems)} of {len(jobs)} jobs did not finish: "
                + ", ".join(f"{j.name} ({j.status})" for j in problems)
                + f". See {report}; re-run the same command to retry them."
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcap.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder, e.g. multirun/table1")
    parser.add_argument(
        "--layout",
        choices=("auto", "flat", "one-at-a-time"),
        default="auto",
        help="one table, one table per varied key, or decide from the sweep plan (default)",
    )
    parser.add_argument(
        "--paper",
        metavar="SWEEP",
        help="show the study's figures that sweep=SWEEP carries now (conf/sweep/SWEEP.yaml, e.g. study), or "
        "none; default: those the sweep was run with (its multirun.yaml), plus any its sweep config has "
        "gained since",
    )
    args = parser.parse_args(argv)
    try:
        paper = None if args.paper is None else {} if args.paper == "none" else sweep_paper(args.paper)
        report = write_report(args.sweep_dir, layout=args.layout, paper=paper)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
