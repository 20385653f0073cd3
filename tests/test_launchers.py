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


@pytest.mark.slow
def test_cold_cache_sweep_with_shipped_defaults(tmp_path: Path) -> None:
    """The mission's sweep on the shipped demo data and defaults (2 jobs side by side, DataLoader workers, the
    default launcher), from an empty cache; only the epochs are capped."""
    result = _sweep(tmp_path, "lr=3e-4,3e-3", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_finished_jobs(tmp_path / "sweep")) == 2
    assert "has no attribute 'env'" not in result.stderr


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
