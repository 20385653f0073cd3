"""k-fold cross-validation: `data.folds=K data.fold=i` splits and their report (folds aggregated like seeds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, compose_config, fast_overrides

from mlcap.data.folds import fold_indices, multi_hot_matrix
from mlcap.settings import SettingsError, validate
from mlcap.train import build_datamodule


def _val_ids(tiny_demo: Path, tmp_path: Path, *overrides: str) -> list[str]:
    cfg = compose_config(
        "train", *fast_overrides(tiny_demo, tmp_path / "cache"), *overrides, output_dir=tmp_path / "run"
    )
    datamodule = build_datamodule(cfg)
    return list(datamodule.tables["val"]["image_id"])


def test_three_folds_cover_every_row_once_as_validation(tiny_demo: Path, tmp_path: Path) -> None:
    rows = pd.read_csv(tiny_demo / "train.csv")["ImageID"].tolist()
    folds = [_val_ids(tiny_demo, tmp_path, "data.folds=3", f"data.fold={i}") for i in range(3)]
    assert sorted(id_ for fold in folds for id_ in fold) == sorted(rows)  # every row once, none twice
    assert all(abs(len(fold) - len(rows) / 3) <= 3 for fold in folds)
    # The same split_seed gives the same folds; the default (no folds) is today's single split.
    assert _val_ids(tiny_demo, tmp_path, "data.folds=3", "data.fold=1") == folds[1]
    assert _val_ids(tiny_demo, tmp_path, "data.folds=3", "data.fold=1", "data.split_seed=1") != folds[1]
    assert len(_val_ids(tiny_demo, tmp_path)) == round(len(rows) * 0.2)


def test_folds_are_stratified_per_label() -> None:
    rng = np.random.default_rng(0)
    labels = [[1] + ([2] if i % 10 == 0 else []) for i in range(300)]  # label 2 on one row in ten
    rng.shuffle(labels)
    shares = []
    for fold in range(5):
        _, val = fold_indices(labels, [1, 2], 5, fold, seed=0)
        shares.append(multi_hot_matrix([labels[i] for i in val], [1, 2])[:, 1].sum())
    assert shares == [6, 6, 6, 6, 6]  # 30 rare-label rows, 6 in each validation fold


def test_fold_settings_are_checked_before_any_work() -> None:
    with pytest.raises(SettingsError, match=r"data.fold=3 is not allowed with data.folds=3: use 0..2"):
        validate(compose_config("train", "data.folds=3", "data.fold=3"))
    with pytest.raises(SettingsError, match="data.folds"):
        validate(compose_config("train", "data.folds=1"))


@pytest.mark.slow
def test_fold_sweep_report_aggregates_folds_like_seeds(tiny_demo: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "folds"
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "data.folds=3",
            "data.fold=0,1,2",
            *fast_overrides(tiny_demo, tmp_path / "cache"),
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 3
    settings = pd.read_csv(sweep_dir / "settings.csv")
    assert len(settings) == 1 and settings.loc[0, "n"] == 3  # one setting, three folds
    assert not np.isnan(settings.loc[0, "val_samples_f1_std"])
    report = (sweep_dir / "report.md").read_text()
    assert "3 jobs: 3 finished" in report and " ± " in report
