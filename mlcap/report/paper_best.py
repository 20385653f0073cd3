"""The study's best model (conf/paper/best.yaml: its Tables 6-7) beside this sweep's matching or best setting:
precision/recall/F1 averages, per-class F1 by label id, run time and size; ours as mean ± std over its seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mlcap.report.loading import FINISHED, SEED_KEY, JobRecord, read_per_class
from mlcap.report.paper import paper_figure
from mlcap.report.tables import (
    SIZE_LIMIT_MB,
    duration,
    markdown,
    mean_std,
    setting_key,
    size_text,
    value_text,
)
from mlcap.runs import same_value


def _best_setting_jobs(
    jobs: Sequence[JobRecord], keys: Sequence[str], setting: Mapping[str, Any]
) -> tuple[list[JobRecord], bool]:
    """The finished jobs of the setting that holds the paper's best model's values (`setting`, its Table 5),
    so the comparison is like for like; without one, those of the highest mean val samples-F1. The flag says
    which it is."""
    groups: dict[str, list[JobRecord]] = {}
    for job in jobs:
        if job.status == FINISHED and job.config and job.metrics.get("val_samples_f1") is not None:
            groups.setdefault(setting_key(job.config, keys), []).append(job)
    if not groups:
        return [], False
    for group in groups.values():
        config = group[0].config
        if all(same_value(config[k], v) for k, v in setting.items() if k in config):
            return group, True
    best = max(groups.values(), key=lambda g: sum(float(j.metrics["val_samples_f1"]) for j in g) / len(g))
    return best, False


def _ours_vs_paper(ours: Sequence[float], paper: float | None, missing: str = "—") -> list[str]:
    """paper | ours (mean ± std over seeds) | ours − paper, as the tables' sections show them."""
    values = pd.Series(ours, dtype=float).dropna()
    mean, n = values.mean(), len(values)
    return [
        paper_figure(paper) if paper is not None else "—",
        mean_std(mean, values.std(), n) if n else missing,
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
    return " ".join(f"{k}={value_text(config.get(k))}" for k in keys) or "the only setting"


def _intro(
    paper: Mapping[str, Any], ours: Sequence[JobRecord], keys: Sequence[str], n_per_class: int, same: bool
) -> str:
    """What the two sides are: the paper's claims, and which of our settings (how it differs from Table 5)."""
    config = ours[0].config
    seeds = " ".join(str(j.config.get(SEED_KEY)) for j in ours)
    partial = (
        f", per-class figures over the {n_per_class} with a per_class.csv" if n_per_class < len(ours) else ""
    )
    differs = [
        f"{k}={value_text(config[k])} (the paper's {value_text(v)})"
        for k, v in (paper.get("setting") or {}).items()
        if k in config and not same_value(config[k], v)
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


def paper_best_section(paper: Mapping[str, Any], jobs: Sequence[JobRecord], keys: Sequence[str]) -> list[str]:
    """The study's best model (conf/paper/best.yaml) beside this sweep's best setting: the four averages of
    precision/recall/F1, per-class F1 by label id, run time and size; ours as mean ± std over its seeds."""
    lines = ["## The study's best model beside ours", ""]
    ours, same_as_paper = _best_setting_jobs(jobs, keys, paper.get("setting") or {})
    if not ours:
        return lines + ["No finished job yet.", ""]
    per_class = {job.name: read_per_class(job) for job in ours}
    with_table = [t for t in per_class.values() if t is not None]
    lines += [_intro(paper, ours, keys, len(with_table), same_as_paper), ""]
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
        markdown(pd.DataFrame(rows, columns=["average", "paper", "ours", "ours − paper"])),
    ]
    lines += _paper_per_class(paper.get("per_class") or [], with_table)
    return lines + _time_and_size(paper, ours)


def _time_and_size(paper: Mapping[str, Any], ours: Sequence[JobRecord]) -> list[str]:
    """Mean wall time per run and model size, the paper's beside ours; its Kaggle score where it gave one."""
    times = [float(j.metrics["wall_time_s"]) for j in ours if j.metrics.get("wall_time_s") is not None]
    sizes = [float(j.metrics["model_size_mb"]) for j in ours if j.metrics.get("model_size_mb") is not None]
    paper_time, paper_size = paper.get("wall_time_s"), paper.get("model_size_mb")
    time = sum(times) / len(times) if times else None
    size = max(sizes) if sizes else None  # one model: the same size on every seed
    rows = [
        [
            "run time (wall, mean per run)",
            duration(paper_time) if paper_time is not None else "—",
            duration(time) if time is not None else "—",
            _signed_duration(time - paper_time) if time is not None and paper_time is not None else "—",
        ],
        [
            f"model size MB (limit {SIZE_LIMIT_MB:.0f})",
            paper_figure(paper_size) if paper_size is not None else "—",
            size_text(size, size > SIZE_LIMIT_MB) if size is not None else "—",
            f"{size - paper_size:+.1f}" if size is not None and paper_size is not None else "—",
        ],
    ]
    if paper.get("kaggle_f1") is not None:
        kaggle = paper_figure(paper["kaggle_f1"])
        rows.append(["Kaggle F1 (public 20% of the test set)", kaggle, "— (test labels are Kaggle's)", "—"])
    return [
        "### Run time and size",
        "",
        markdown(pd.DataFrame(rows, columns=["", "paper", "ours", "ours − paper"])),
    ]


def _signed_duration(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + duration(abs(seconds))


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
        markdown(pd.DataFrame(rows, columns=columns)),
    ]
