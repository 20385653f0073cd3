"""report.md as a whole: which sections in which order (header, search, the paper's tables, our results in
the chosen layout with their plots, captions, the study's best model, the best run, failed and unfinished
jobs), and the CSVs and PNGs written beside it. A new report section is a function returning Markdown lines,
called from write_report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcap.report.captions import caption_sections
from mlcap.report.loading import (
    FAILED,
    FINISHED,
    INVALID,
    NOT_STARTED,
    UNFINISHED,
    JobRecord,
    load_jobs,
    plan_axes,
    read_per_class,
    varied_keys,
)
from mlcap.report.paper import is_best_model, paper_marks, paper_sections, saved_paper
from mlcap.report.paper_best import paper_best_section
from mlcap.report.plots import plot_f1, plot_per_class
from mlcap.report.search import search_sections
from mlcap.report.tables import (
    SIZE_LIMIT_MB,
    base_values,
    display,
    markdown,
    one_at_a_time_tables,
    slug,
    value_text,
    write_tables,
)
from mlcap.runs import write_atomic

LAYOUTS = ("auto", "flat", "one-at-a-time")


def write_report(sweep_dir: str | Path, layout: str = "auto", paper: Mapping[str, Any] | None = None) -> Path:
    """Write report.md, CSVs and PNGs into `sweep_dir`; return the report path.

    layout: "flat" (one table), "one-at-a-time" (one table per varied key) or "auto" (one-at-a-time when the
    sweep was planned with axes, e.g. sweep=table4). paper: the study's figures (conf/paper/*.yaml: tables and
    its best model) to show beside ours, as hydra.callbacks.report.paper holds them ({} for none); by default
    those the sweep was run with (its multirun.yaml), plus any its sweep config has gained since.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be auto, flat or one-at-a-time, got {layout!r}")
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir} holds no job folders (no */.hydra/config.yaml); pass the folder of a multirun, "
            "e.g. multirun/table1"
        )
    axes = plan_axes(sweep_dir)
    keys = _ordered_keys(jobs, axes)
    frame, settings = write_tables(sweep_dir, jobs, keys)
    one_at_a_time = layout == "one-at-a-time" or (layout == "auto" and bool(axes))
    figures = [dict(f) for f in (saved_paper(sweep_dir) if paper is None else paper).values()]
    paper_tables = [f for f in figures if not is_best_model(f)]
    paper_best = next((f for f in figures if is_best_model(f)), None)
    common = _common_overrides(jobs)
    lines = _report_header(sweep_dir, jobs, frame, keys, common)
    lines += search_sections(sweep_dir)  # an Optuna search's trials, best command and plots (else nothing)
    lines += _results_sections(sweep_dir, jobs, settings, keys, paper_tables, one_at_a_time)
    lines += caption_sections(jobs)  # model=captioner: caption metrics beside the baselines (else nothing)
    lines += paper_best_section(paper_best, jobs, keys) if paper_best else []
    lines += _best_run_section(jobs, sweep_dir, common)
    lines += _problem_section(jobs, common)
    report = sweep_dir / "report.md"
    write_atomic(report, "\n".join(lines).rstrip() + "\n")
    return report


def _common_overrides(jobs: Sequence[JobRecord]) -> list[str]:
    with_overrides = [j.overrides for j in jobs if j.overrides]
    if not with_overrides:
        return []
    return [o for o in with_overrides[0] if all(o in other for other in with_overrides[1:])]


def _ordered_keys(jobs: Sequence[JobRecord], axes: Sequence[str]) -> list[str]:
    """The varied keys in the sweep's axis order first, so tables and plots follow the plan."""
    keys = varied_keys(jobs)
    return [k for k in axes if k in keys] + [k for k in keys if k not in axes]


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
    base = base_values(settings, keys)
    common_config = {k: v for k, v in jobs[0].config.items() if k not in keys} if jobs[0].config else {}
    lines = paper_sections(paper_tables, settings, keys, {**common_config, **base}) if paper_tables else []
    if one_at_a_time and keys:
        results, plots = _one_at_a_time_results(sweep_dir, settings, keys, base, best_f1, paper_tables)
    else:
        marks = paper_marks(paper_tables, keys, {**common_config, **base})
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
        + ", ".join(f"`{k}={value_text(v)}`" for k, v in base.items())
        + ").",
        "",
    ]
    plots: list[Path] = []
    for key, table in one_at_a_time_tables(settings, keys).items():
        write_atomic(sweep_dir / f"settings_{slug(key)}.csv", table.to_csv(index=False))
        lines += [f"### `{key}`", "", markdown(display(table, [key], best_f1))]
        marks = paper_marks(paper_tables, [key])
        plot = plot_f1(table, key, [key], sweep_dir / f"val_samples_f1_by_{slug(key)}.png", marks)
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
    lines = ["## Results", "", markdown(display(settings, keys, best_f1))]
    if len(keys) == 1:
        path = sweep_dir / f"val_samples_f1_by_{slug(keys[0])}.png"
        plot = plot_f1(settings, keys[0], keys, path, marks)
    else:
        plot = plot_f1(settings, None, keys, sweep_dir / "val_samples_f1_by_setting.png", marks)
    return lines, [plot] if plot else []


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
    per_class = read_per_class(best)
    if per_class is None:
        return lines + [f"(no per_class.csv in {best.path})", ""]
    assert best.path is not None
    write_atomic(sweep_dir / "best_per_class.csv", (best.path / "per_class.csv").read_text())
    plot = plot_per_class(per_class, sweep_dir / "best_per_class.png")
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
            lines += [f"## {title}", "", markdown(pd.DataFrame(rows))]
    return lines
