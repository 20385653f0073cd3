"""The study's tables beside ours: which figures a sweep carries (its multirun.yaml, conf/sweep/<sweep>.yaml's
`/paper/...` defaults), where each paper row sits among our settings, and report.md's per-table sections.

conf/ is read as it is now through mlcap.config_files.CONF_DIR, without Hydra.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from mlcap.config_files import CONF_DIR
from mlcap.report.loading import read_yaml
from mlcap.report.tables import markdown, mean_std, row_matches, value_text
from mlcap.runs import same_value

_PAPER_DEFAULT = re.compile(r"^/?paper/(?P<file>[\w.-]+)@hydra\.callbacks\.report\.paper\.(?P<key>[\w-]+)$")


def sweep_paper(sweep: str, conf_dir: Path = CONF_DIR) -> dict[str, dict[str, Any]]:
    """The study's figures that `sweep=<sweep>` composes into hydra.callbacks.report.paper, read from conf/ as
    it is now: conf/sweep/<sweep>.yaml's `/paper/<file>@hydra.callbacks.report.paper.<key>` defaults."""
    path = conf_dir / "sweep" / f"{sweep}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "sweep").glob("*.yaml"))
        raise ValueError(f"no sweep config {path}; the paper's figures come from one of: {', '.join(known)}")
    sweep_config = read_yaml(path)
    defaults = (sweep_config.get("defaults") or []) if isinstance(sweep_config, dict) else []
    matches = [_PAPER_DEFAULT.match(entry) for entry in defaults if isinstance(entry, str)]
    return {m["key"]: read_yaml(conf_dir / "paper" / f"{m['file']}.yaml") for m in matches if m}


def saved_paper(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The study's figures the sweep was run with (hydra.callbacks.report.paper in its multirun.yaml), plus
    those its sweep config (hydra.runtime.choices.sweep) carries now and it lacked: figures added since."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    saved = OmegaConf.create(read_yaml(path))
    node = OmegaConf.select(saved, "hydra.callbacks.report.paper", default=None)
    paper = dict(OmegaConf.to_container(node)) if node else {}  # type: ignore[arg-type]
    choice = OmegaConf.select(saved, "hydra.runtime.choices.sweep", default=None)
    if isinstance(choice, str) and (CONF_DIR / "sweep" / f"{choice}.yaml").is_file():
        paper = {**sweep_paper(choice), **paper}  # the saved figures win; the order is the config's
    return paper


def is_best_model(figures: Mapping[str, Any]) -> bool:
    """conf/paper/best.yaml's shape (the study's best model), as against a table's (title and rows)."""
    return "averages" in figures or "per_class" in figures


def paper_figure(value: float) -> str:
    """A figure of the paper as it printed it: two decimals at least (0.90, 0.00), more where it gave more."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def _target(
    setting: Mapping[str, Any], keys: Sequence[str], base: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The values of our varied keys at which a paper row was measured, or None if our sweep cannot have it
    (it sets a key that our jobs all hold at another value)."""
    for key, value in setting.items():
        if key not in keys and key in base and not same_value(base[key], value):
            return None
    return {key: setting.get(key, base.get(key)) for key in keys}


def _matching(settings: pd.DataFrame, target: Mapping[str, Any] | None) -> pd.Series | None:
    if target is None:
        return None
    rows = settings[settings.apply(lambda row: row_matches(row, dict(target)), axis=1)]
    return rows.iloc[0] if len(rows) else None


def paper_marks(
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


def _paper_cells(ours: pd.Series | None, prow: Mapping[str, Any], metric: str, std: bool = True) -> list[str]:
    """paper | ours (| ours - paper for F1) for one metric; '—' where either side has no figure."""
    paper = prow.get(metric)
    n = int(ours["n"]) if ours is not None else 0
    mine = ours.get(f"{metric}_mean", ours.get(metric)) if ours is not None and n else None
    cells = [f"{paper:.4g}" if paper is not None else "—"]
    if metric == "val_samples_f1":
        cells.append(mean_std(mine, ours["val_samples_f1_std"], n) if mine is not None else "not run")
        cells.append(f"{mine - paper:+.4f}" if mine is not None and paper is not None else "—")
    else:
        cells.append(f"{mine:.4g}" if mine is not None and not pd.isna(mine) else "—")
    return cells


_COLUMNS = [
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


def paper_sections(
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
            setting = " ".join(f"{k}={value_text(v)}" for k, v in prow["setting"].items())
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
        lines += [f"### {table.get('title', 'Table')}", "", markdown(pd.DataFrame(rows, columns=_COLUMNS))]
    return lines
