"""A sweep stopped or hit by a lost job, as issue 19's hostile tests found them on the joblib launcher.

* SIGTERM to the sweep (`timeout 600 python train.py -m ...`) left joblib's workers running, re-parented,
  training and holding the job folders' locks; a re-run said "another mlcap process is writing".
* SIGKILL of one worker of a 3-job sweep aborted its sibling and never started the third: no report.md, no
  failed.json, a raw TerminatedWorkerError.

These run a real sweep of the default launcher (`hydra/launcher=mlcap`) in a process group of its own and
signal it as a user's terminal or the out-of-memory killer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, fast_overrides


def _start(tiny_demo: Path, tmp_path: Path, *overrides: str) -> subprocess.Popen[str]:
    """`train.py -m` on the tiny demo with DataLoader workers as shipped, long enough to be stopped mid-way."""
    settings = [
        o for o in fast_overrides(tiny_demo, tmp_path / "cache") if not o.startswith("data.num_workers")
    ]
    command = [
        sys.executable,
        "train.py",
        "-m",
        *settings,
        "callbacks.early_stopping.patience=1000",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _wait_for(condition, process: subprocess.Popen[str], timeout: float = 240) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the sweep ended before the test could signal it:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("the sweep's jobs never reached their first checkpoint")
        time.sleep(0.2)


def _last_checkpoints(sweep_dir: Path) -> list[Path]:
    return list(sweep_dir.glob("*/checkpoints/last.ckpt"))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _job_processes(sweep_pid: int) -> list[int]:
    """The sweep's job processes: its children started by multiprocessing's spawn (not its resource tracker)."""
    jobs = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == sweep_pid and "spawn_main" in cmdline:
            jobs.append(int(status.parent.name))
    return jobs


def _train_logs(sweep_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sweep_dir.glob("*/train.log"))


def test_sigterm_stops_every_job_frees_the_locks_and_the_rerun_resumes(
    tiny_demo: Path, tmp_path: Path
) -> None:
    overrides = ("lr=1e-3,2e-3", "trainer.max_epochs=40")
    sweep = _start(tiny_demo, tmp_path, *overrides)
    sweep_dir = tmp_path / "sweep"
    _wait_for(lambda: len(_last_checkpoints(sweep_dir)) == 2, sweep)

    sweep.send_signal(signal.SIGTERM)  # to the sweep process alone, as `timeout` or `kill` would
    output = sweep.communicate(timeout=120)[0]
    deadline = time.monotonic() + 60
    while _group_alive(sweep.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(sweep.pid), "a job or DataLoader worker outlived the stopped sweep"
    assert sweep.returncode != 0
    assert "sweep stopped" in output and "Traceback" not in output, output[-3000:]
    assert not list(sweep_dir.glob("*/metrics.json")), "a job reported results although it was stopped"

    rerun = _start(tiny_demo, tmp_path, *overrides)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output[-3000:]
    assert "another mlcap process" not in output
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 2
    assert _train_logs(sweep_dir).count("resuming the interrupted run") == 2


def test_a_killed_job_is_the_only_job_lost_and_the_report_names_it(tiny_demo: Path, tmp_path: Path) -> None:
    sweep = _start(
        tiny_demo, tmp_path, "lr=1e-3,2e-3,3e-3", "trainer.max_epochs=25", "hydra.launcher.n_jobs=2"
    )
    sweep_dir = tmp_path / "sweep"
    _wait_for(lambda: len(_last_checkpoints(sweep_dir)) == 2, sweep)
    victims = _job_processes(sweep.pid)
    assert len(victims) == 2, f"expected 2 running job processes, found {victims}"
    os.kill(victims[0], signal.SIGKILL)  # as the out-of-memory killer would

    output = sweep.communicate(timeout=600)[0]
    finished = list(sweep_dir.glob("*/metrics.json"))
    failed = list(sweep_dir.glob("*/failed.json"))
    assert len(finished) == 2 and len(failed) == 1, output[-3000:]
    assert "killed by SIGKILL" in json.loads(failed[0].read_text())["error"]
    report = (sweep_dir / "report.md").read_text()
    assert failed[0].parent.name in report and "SIGKILL" in report
    assert "TerminatedWorkerError" not in output
