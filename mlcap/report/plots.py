"""The report's PNGs: val samples-F1 (mean, std error bars) against a varied key or per setting, the paper's
figure as a red cross beside ours, and the best run's per-class precision / recall / F1.

matplotlib is imported (Agg backend) only when a plot is drawn; files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcap.report.tables import value_text
from mlcap.runs import atomic_path, same_value


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot_f1(
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
        ax.set_xticks(list(x), [value_text(v) for v in ordered[key]])
        ax.minorticks_off()
        ax.set_xlabel(key)
        ax.set_ylabel(title)
    else:  # categorical values or whole settings: horizontal bars leave room for long labels
        shown_keys = [key] if key is not None else list(keys)
        labels = [", ".join(f"{k}={value_text(row[k])}" for k in shown_keys) for _, row in done.iterrows()]
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


def _paper_f1(
    row: pd.Series, keys: Sequence[str], marks: Sequence[tuple[dict[str, Any], float]]
) -> float | None:
    """The paper's F1 at this row's values of `keys` (mlcap.report.paper.paper_marks), None where it has none."""
    for target, f1 in marks:
        if all(same_value(row[k], target[k]) for k in keys):
            return f1
    return None


def plot_per_class(per_class: pd.DataFrame, path: Path) -> Path:
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
