"""Sweeps as a new user runs them: a cold feature cache, DataLoader workers as shipped, each local launcher.

Issue 19: every job of a `-m` sweep from an empty cache failed with `'Process' object has no attribute 'env'`
(DataLoader workers inside joblib's loky workers) while the suite, on warm caches and `num_workers=0`, was
green. These tests run `train.py -m` in a subprocess with the shipped `data.num_workers` and an empty cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO


def _sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLCAP_CACHE_DIR": str(tmp_path / "cold-cache")}
    return subprocess.run(
        [sys.executable, "train.py", "-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _finished_jobs(sweep_dir: Path) -> list[str]:
    plan = json.loads((sweep_dir / "sweep_plan.json").read_text())
    return [job["name"] for job in plan["jobs"] if (sweep_dir / job["name"] / "metrics.json").is_file()]


@pytest.fixture(scope="module")
def shipped_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The mission's sweep on the shipped demo data and defaults (2 jobs side by side, DataLoader workers, the
    default launcher), from an empty cache; only the epochs are capped. Run once for the tests that use it."""
    tmp_path = tmp_path_factory.mktemp("shipped-sweep")
    return tmp_path, _sweep(tmp_path, "lr=3e-4,3e-3", "trainer.max_epochs=1")


@pytest.mark.slow
def test_cold_cache_sweep_with_shipped_defaults(
    shipped_sweep: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    tmp_path, result = shipped_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_finished_jobs(tmp_path / "sweep")) == 2
    assert "has no attribute 'env'" not in result.stderr


@pytest.mark.slow
def test_cold_cache_predict_with_shipped_defaults(
    shipped_sweep: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """predict.py as a user runs it after that sweep: one of its checkpoints, a fresh empty cache (so the test
    images' features are extracted with the shipped DataLoader workers), everything else as shipped."""
    sweep_dir, result = shipped_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = sweep_dir / "sweep" / _finished_jobs(sweep_dir / "sweep")[0] / "checkpoints" / "best.ckpt"
    out = tmp_path / "predict"
    predicted = subprocess.run(
        # The job folder's name holds `=`: quoted, as Hydra's override grammar accepts it.
        [sys.executable, "predict.py", f"ckpt_path='{ckpt}'", f"hydra.run.dir={out}"],
        cwd=REPO,
        env={**os.environ, "MLCAP_CACHE_DIR": str(tmp_path / "fresh-cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    test_rows = pd.read_csv(sweep_dir / "cold-cache" / "demo-data" / "test.csv")
    submission = pd.read_csv(out / "submission.csv")
    assert list(submission.columns) == ["ImageID", "Labels"]
    assert len(submission) == len(test_rows) == 500


@pytest.mark.parametrize("launcher", ["hydra/launcher=joblib", "hydra/launcher=submitit_local"])
def test_cold_cache_sweep_on_other_launchers(tmp_path: Path, launcher: str) -> None:
    """joblib side by side (the launcher that failed) and submitit's local one, workers as shipped (2)."""
    extra = ["hydra.launcher.n_jobs=2"] if "joblib" in launcher else []
    result = _sweep(
        tmp_path,
        launcher,
        *extra,
        "lr=3e-4,3e-3",
        "data.demo.n_train=200",
        "data.demo.n_test=20",
        "trainer.max_epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_finished_jobs(tmp_path / "sweep")) == 2
