"""Sweeps through `hydra/launcher=slurm` on a real one-node SLURM cluster (scripts/slurm-local.sh): jobs run as
SLURM jobs into their settings-named folders, and a cancelled job is reported (never waited for) and re-run.

Needs Debian's slurm-wlm and munge and root (CI installs them in .ci/run); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, compose_config, fast_overrides
from hydra.utils import get_class

from hydra_plugins.mlcap_slurm_launcher import MlcapSlurmLauncher, status_command

SCRIPT = REPO / "scripts" / "slurm-local.sh"

needs_slurm = pytest.mark.skipif(
    shutil.which("slurmctld") is None or os.geteuid() != 0,
    reason="needs a local SLURM: root and slurmctld on PATH (apt-get install slurm-wlm munge)",
)


def test_the_slurm_preset_composes_with_the_training_config() -> None:
    """conf/train.yaml sets the joblib launcher's n_jobs; submitit's own preset refuses that key."""
    config = compose_config("train", "hydra/launcher=slurm", return_hydra_config=True)
    launcher = config.hydra.launcher
    # named by its import path (Hydra loads plugins as modules of their own), and importable by it
    assert launcher._target_ == f"{MlcapSlurmLauncher.__module__}.{MlcapSlurmLauncher.__qualname__}"
    assert get_class(launcher._target_).__qualname__ == "MlcapSlurmLauncher"
    assert launcher.cpus_per_task == 2 and launcher.timeout_min == 240 and launcher.partition is None
    assert launcher.submitit_folder == f"{config.hydra.sweep.dir}/.submitit/%j"  # logs in the sweep folder


def test_job_states_come_from_squeue_where_sacct_has_no_accounting(tmp_path: Path) -> None:
    """The fallback's output is what submitit's own parser reads (array tasks included)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    (fake / "squeue").write_text("#!/bin/sh\nprintf '7_0|COMPLETED|vm\\n7_1|CANCELLED|\\n8|TIMEOUT|vm\\n'\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    output = subprocess.run(status_command(["7", "8"]), env=env, capture_output=True, check=True).stdout
    states = {job: info["State"] for job, info in SlurmInfoWatcher().read_info(output).items()}
    assert states == {"7_0": "COMPLETED", "7_1": "CANCELLED", "8": "TIMEOUT"}


def _free_port_pair() -> int:
    """A port whose successor is free too (slurmctld, slurmd), so a cluster already running here is left be."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a sweep on a fresh one-node cluster of its own (stopped afterwards)."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "MLCAP_SLURM_DIR": str(folder), "MLCAP_SLURM_PORT": str(_free_port_pair())}
    subprocess.run(["bash", str(SCRIPT), "start"], env=env, check=True, timeout=120)
    try:
        yield {**env, "SLURM_CONF": str(folder / "slurm.conf"), "PYTHONPATH": str(REPO)}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120)


def _sweep(
    env: dict[str, str], sweep_dir: Path, *overrides: str, tiny: Path, cache: Path
) -> subprocess.Popen[str]:
    command = [sys.executable, "train.py", "-m", *fast_overrides(tiny, cache), *overrides]
    command += ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _planned(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "sweep_plan.json").read_text())["jobs"]


@needs_slurm
def test_a_sweep_runs_each_job_as_a_slurm_job(
    cluster: dict[str, str], tiny_demo: Path, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    # n_jobs=1 (joblib's knob, which SLURM ignores) would give a local job every core: threads must come from
    # cpus_per_task=1 instead.
    args = ("lr=3e-4,3e-3", "hydra.launcher.n_jobs=1")
    sweep = _sweep(cluster, sweep_dir, *args, tiny=tiny_demo, cache=tmp_path / "cache")
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out
    jobs = _planned(sweep_dir)
    assert len(jobs) == 2
    metrics = [json.loads((sweep_dir / job["name"] / "metrics.json").read_text()) for job in jobs]
    ids = {m["slurm_job_id"] for m in metrics}
    assert None not in ids and len(ids) == 2, ids  # two SLURM jobs, not the submitting process
    assert all(m["threads"] == 1 for m in metrics)  # torch threads from hydra.launcher.cpus_per_task
    assert "2 jobs: 2 finished" in (sweep_dir / "report.md").read_text()


def _cancel_when_training(
    sweep_dir: Path, name: str, sweep: subprocess.Popen[str], env: dict[str, str]
) -> float:
    """scancel the job in `name` once its log names a new SLURM job; the time it was cancelled."""
    log = sweep_dir / name / "train.log"
    before = len(_slurm_lines(log))  # a re-run's log goes on after the earlier job's lines
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        lines = _slurm_lines(log)
        if len(lines) > before and (sweep_dir / name / "config_resolved.yaml").is_file():
            job_id = lines[-1].split("SLURM job ")[1].split()[0]
            subprocess.run(["scancel", job_id], env=env, check=True)
            return time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"the job in {name} never started: {sweep.communicate()[0] if sweep.poll() else ''}")


@needs_slurm
def test_a_cancelled_job_is_reported_within_two_minutes_and_rerun_alone(
    cluster: dict[str, str], tiny_demo: Path, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    # One job stops early (patience 1); the other trains 500 epochs at least, long enough to be cancelled.
    args = ("trainer.min_epochs=1,500", "trainer.max_epochs=500", "callbacks.early_stopping.patience=1")
    sweep = _sweep(cluster, sweep_dir, *args, tiny=tiny_demo, cache=tmp_path / "cache")
    jobs = {
        ("trainer.min_epochs=500" in job["overrides"]): job["name"]
        for job in _wait_for_plan(sweep_dir, sweep)
    }
    quick, long = jobs[False], jobs[True]
    cancelled = _cancel_when_training(sweep_dir, long, sweep, cluster)
    out, _ = sweep.communicate(timeout=120)
    assert time.monotonic() - cancelled < 120, "the cancelled job was waited for too long"
    assert sweep.returncode == 1, out
    assert f"{long} (failed)" in out  # the exit line names it
    failure = json.loads((sweep_dir / long / "failed.json").read_text())["error"]
    assert "CANCELLED" in failure, failure
    assert "CANCELLED" in (sweep_dir / "report.md").read_text()
    finished = (sweep_dir / quick / "metrics.json").stat().st_mtime_ns

    # The same command again runs only the cancelled job (cancelled again here: it would train for minutes).
    rerun = _sweep(cluster, sweep_dir, *args, tiny=tiny_demo, cache=tmp_path / "cache")
    cancelled = _cancel_when_training(sweep_dir, long, rerun, cluster)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 1, out
    assert "2 jobs" in out and "1 to run" in out and "submitted SLURM array" in out and "(1 jobs)" in out, out
    assert (sweep_dir / quick / "metrics.json").stat().st_mtime_ns == finished


def _slurm_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "SLURM job" in line] if log.is_file() else []


def _wait_for_plan(sweep_dir: Path, sweep: subprocess.Popen[str]) -> list[dict]:
    deadline = time.monotonic() + 120
    while not (sweep_dir / "sweep_plan.json").is_file():
        assert time.monotonic() < deadline and sweep.poll() is None, sweep.communicate()[0]
        time.sleep(0.2)
    return _planned(sweep_dir)
