"""Hydra launcher plugin `hydra/launcher=mlcap`, train.py's default: each sweep job in a process of its own,
`n_jobs` of them side by side.

Why not Hydra's joblib launcher (still available as `hydra/launcher=joblib`): joblib's loky executor shares
its worker processes between jobs, so one worker killed (by the out-of-memory killer, or by hand) breaks the
whole executor and every job running beside it, and nobody can tell which job died; a sweep stopped with
SIGTERM left its workers running. Here a job is one fresh process (started by `spawn`, like loky's), so:

* a job whose process dies is the only job lost, and it is named: its `failed.json` says how it died;
* SIGTERM or Ctrl-C stops the sweep (the mlcap sweeper turns SIGTERM into Ctrl-C): each job is asked to
  stop as by Ctrl-C (Lightning shuts down, the job's folder lock is freed), is killed after `stop_grace_s`,
  and resumes from its `last.ckpt` when the sweep's command runs again;
* a job process dies with the sweep process (Linux `PR_SET_PDEATHSIG`), so no job is ever orphaned.

No `from __future__ import annotations` here: Hydra executes this module before registering it in
sys.modules (see hydra_plugins/mlcap_sweeper). Cheap to import: every Hydra app imports it at discovery.
"""

import contextlib
import logging
import multiprocessing
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class MlcapLauncherConf:
    _target_: str = "hydra_plugins.mlcap_launcher.MlcapLauncher"
    # Jobs side by side, each in its own process; -1: one per core; 1: one after the other. On a CPU, small
    # models train faster side by side with fewer threads each (mlcap.run_facts.cpu_threads shares the cores).
    n_jobs: int = 2
    # Seconds a job gets to stop after SIGTERM/Ctrl-C of the sweep before it is killed.
    stop_grace_s: float = 30.0


ConfigStore.instance().store(group="hydra/launcher", name="mlcap", node=MlcapLauncherConf, provider="mlcap")


class SweepStopped(KeyboardInterrupt):
    """The sweep process got SIGTERM (or Ctrl-C): its jobs were stopped; a re-run resumes them."""


class MlcapLauncher(Launcher):
    """One process per job, `n_jobs` at a time; a dead job process fails that job alone."""

    def __init__(self, n_jobs: int = 2, stop_grace_s: float = 30.0) -> None:
        self.n_jobs = n_jobs
        self.stop_grace_s = stop_grace_s
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.utils import configure_log, setup_globals

        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        side_by_side = self.n_jobs if self.n_jobs > 0 else multiprocessing.cpu_count()
        log.info(
            "launching %d jobs, %d side by side, each in its own process", len(job_overrides), side_by_side
        )
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        jobs = [
            _JobProcess(
                idx, list(overrides), self._payload(idx, overrides), _job_folder(sweep_dir, overrides)
            )
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx)
        ]
        return _run_all(jobs, side_by_side, self.stop_grace_s)

    def _payload(self, idx: int, overrides: Sequence[str]) -> bytes:
        """What a job process needs, pickled by value (the task function lives in __main__, which plain pickle
        cannot send): the same arguments Hydra's joblib launcher sends its workers."""
        import cloudpickle
        from hydra.core.singleton import Singleton

        return cloudpickle.dumps(
            (idx, list(overrides), self.hydra_context, self.config, self.task_function, Singleton.get_state())
        )


class _JobProcess:
    """A job, its process once started, and the pipe its JobReturn comes back through."""

    def __init__(self, idx: int, overrides: list[str], payload: bytes, folder: Path | None) -> None:
        self.idx, self.overrides, self.payload, self.folder = idx, overrides, payload, folder
        self.process: Any = None
        self.receiver: Connection | None = None
        self.result: JobReturn | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.receiver, sender = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_job_main, args=(self.payload, sender), name=f"mlcap-job-{self.idx}"
        )
        self.process.start()
        sender.close()

    def collect(self) -> JobReturn:
        """The job's JobReturn, or a failed one saying how its process died (recorded in its failed.json)."""
        assert self.receiver is not None
        self.process.join()
        if self.receiver.poll():
            try:
                self.result = self.receiver.recv()
            except (EOFError, OSError):
                self.result = None
        self.receiver.close()
        if self.result is None:
            self.result = _lost(self.overrides, self.folder, self.process.exitcode)
        return self.result


def _run_all(jobs: list["_JobProcess"], side_by_side: int, grace: float) -> list[JobReturn]:
    """Start jobs up to `side_by_side` at once, collect each as its process ends; stop all on Ctrl-C."""
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < side_by_side:
                job = pending.pop(0)
                job.start()
                running.append(job)
            ended = wait([job.process.sentinel for job in running])
            for job in [j for j in running if j.process.sentinel in ended]:
                running.remove(job)
                if job.collect().status == JobStatus.FAILED:
                    log.error("job #%d failed: %s", job.idx, " ".join(filter_overrides(job.overrides)))
    except KeyboardInterrupt:
        _stop(running, grace)
        raise SweepStopped(
            f"sweep stopped: {len(running)} running job(s) interrupted, {len(pending)} not started; "
            "re-run the same command to resume them"
        ) from None
    return [job.result for job in jobs if job.result is not None]


def _stop(running: list["_JobProcess"], grace: float) -> None:
    """Ask every running job to stop (SIGTERM, which a job takes as Ctrl-C), then kill what is left."""
    for job in running:
        if job.process.is_alive():
            job.process.terminate()
    for job in running:
        job.process.join(grace)
        if job.process.is_alive():
            log.warning("job #%d did not stop within %.0f s: killing it", job.idx, grace)
            job.process.kill()
            job.process.join()


def _job_folder(sweep_dir: Path, overrides: Sequence[str]) -> Path | None:
    """The job's folder, from the `hydra.sweep.subdir=` override the mlcap sweeper gives every job."""
    for override in overrides:
        if override.startswith("hydra.sweep.subdir="):
            return sweep_dir / override.split("=", 1)[1].strip("'")
    return None


def _lost(overrides: list[str], folder: Path | None, exitcode: int | None) -> JobReturn:
    """A JobReturn for a job whose process ended without one; its failed.json names it in the report."""
    from mlcap.runs import FAILED_FILE, METRICS_FILE, write_json

    how = (
        f"killed by {signal.Signals(-exitcode).name}"
        if exitcode is not None and exitcode < 0
        else f"exited with code {exitcode}"
    )
    error = RuntimeError(
        f"the process running this job was {how} before it finished (out of memory, or stopped by hand?); "
        "re-run the same command to run it again"
    )
    if folder is not None and not (folder / METRICS_FILE).exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / FAILED_FILE, {"error": f"{type(error).__name__}: {error}", "traceback": ""})
    return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=error)


def _job_main(payload: bytes, sender: Connection) -> None:
    """A job process: die with the sweep, take SIGTERM as Ctrl-C, run the job as Hydra's joblib launcher
    does, send its JobReturn back."""
    import cloudpickle

    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    idx, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    try:
        result = _run_job(idx, overrides, hydra_context, config, task_function, singleton_state)
    except (KeyboardInterrupt, SystemExit):  # stopped with the sweep (Lightning turns Ctrl-C into exit(1))
        log.warning("job #%d stopped; re-running the sweep's command resumes it", idx)
        sys.exit(130)
    try:
        sender.send(result)
    except Exception as err:  # noqa: BLE001 - an unpicklable return value or exception: send what is known
        result = JobReturn(overrides=overrides, status=result.status, _return_value=RuntimeError(repr(err)))
        sender.send(result)
    sender.close()


def _run_job(
    idx: int,
    overrides: list[str],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """hydra_joblib_launcher._core.execute_job, in a process of its own."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the sweep process dies, even by SIGKILL (no orphaned jobs)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
