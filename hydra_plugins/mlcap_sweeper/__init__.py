"""Hydra sweeper plugin `hydra/sweeper=mlcap`, train.py's sweeper for every `-m` run: command-line lists,
explicit points and one-at-a-time axes (see mlcap.sweep), under the run-folder rules of mlcap.runs.

Built on Hydra's public `Sweeper` plugin API. Hydra only instantiates plugins defined under the
`hydra_plugins` namespace package, so the class lives here; the expansion and the checks are in `mlcap.sweep`
and `mlcap.runs`. Every Hydra app imports this module during plugin
discovery, so it must stay cheap to import (no torch, mlcap.sweep imported lazily).

No `from __future__ import annotations` here: Hydra executes this module before registering it in
sys.modules, and dataclasses cannot resolve string annotations of such a module.
"""

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class MlcapSweeperConf:
    _target_: str = "hydra_plugins.mlcap_sweeper.MlcapSweeper"
    # Jobs handed to the launcher at once (null: all); the joblib launcher runs a batch side by side.
    max_batch_size: int | None = None
    # Extra overrides swept like command-line ones (cartesian), as in the basic sweeper.
    params: dict[str, str] | None = None
    # Explicit settings, each a mapping of override key -> value, e.g. [{model.caption: false}, ...].
    points: list[dict[str, Any]] | None = None
    # One-at-a-time grid: key -> values; each value runs with every other key at the composed config's.
    axes: dict[str, list[Any]] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="mlcap", node=MlcapSweeperConf, provider="mlcap")


class MlcapSweeper(Sweeper):
    """Discrete sweeps (command-line lists, points, axes) with settings-named job folders that follow the run
    rules of `mlcap.runs`: every job's settings and folder are checked before any job starts, finished jobs
    are not launched again, and a failing job does not stop the others."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        points: list[dict[str, Any]] | None = None,
        axes: dict[str, list[Any]] | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.params = _plain(params) or {}
        self.points = _plain(points) or []
        self.axes = _plain(axes) or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _base_value(self, key: str) -> Any:
        """The composed config's value of an axis key (for a config group: the selected option)."""
        from mlcap.sweep import bare_key

        assert self.config is not None
        key = bare_key(key)
        choices = self.config.hydra.runtime.choices
        if key in choices:
            return choices[key]
        return OmegaConf.select(self.config, key, default=None, throw_on_missing=False)

    def _jobs(self, arguments: list[str]) -> list[Any]:
        from mlcap.sweep import command_line_lists, expand_sweep, sweep_points

        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{key}={value}" for key, value in self.params.items()]
        parsed = parser.parse_overrides([*params, *arguments])
        base = {key: self._base_value(key) for key in self.axes}
        return expand_sweep(command_line_lists(parsed), sweep_points(self.points, self.axes, base))

    def sweep(self, arguments: list[str]) -> Any:
        from mlcap.errors import one_line
        from mlcap.runs import RunFolderError, check_run_folder, lock_folder
        from mlcap.sweep import check_jobs, job_overrides, write_plan

        assert self.config is not None and self.hydra_context is not None
        config, loader = self.config, self.hydra_context.config_loader
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        if OmegaConf.select(config, "hparams_search", default=None) is not None:
            return self._search(arguments, sweep_dir)
        try:  # a refusal is a clear message, not a traceback: nothing has run and no folder was touched
            if "slurm" not in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
                check_n_jobs(OmegaConf.select(config, "hydra.launcher.n_jobs", default=1))  # local launchers
            compose = lambda overrides: loader.load_sweep_config(config, overrides)  # noqa: E731
            planned = check_jobs(sweep_dir, self._jobs(arguments), compose)
            check_run_folder(sweep_dir, "hydra.sweep.dir")  # not the data root: nothing written there
            lock = lock_folder(sweep_dir)  # one sweep at a time per folder
        except (ValueError, RunFolderError) as err:
            raise SystemExit(f"error: {err}") from None
        except OSError as err:  # the folder cannot be made (under a file, read-only, disk full)
            raise SystemExit(
                f"error: hydra.sweep.dir={sweep_dir} cannot be written: {one_line(err)}"
            ) from None
        try:
            OmegaConf.save(config, sweep_dir / "multirun.yaml")
            write_plan(sweep_dir, [job for job, _ in planned], list(self.axes))
            todo = [job for job, state in planned if state != "finished"]
            for job, state in planned:
                if state == "finished":
                    log.info("already finished with the same config, not launched again: %s", job.name)
            log.info(
                "sweep of %d jobs into %s: %d to run (%d resumed), %d already finished",
                len(planned),
                sweep_dir,
                len(todo),
                sum(state == "interrupted" for _, state in planned),
                len(planned) - len(todo),
            )
            with stop_on_sigterm():
                return self._launch([job_overrides(job) for job in todo])
        except KeyboardInterrupt as err:  # the launcher stopped its jobs; their folders resume on a re-run
            _kill_joblib_workers()
            raise SystemExit(
                f"error: {err or 'sweep stopped: re-run the same command to resume its jobs'}"
            ) from None
        finally:
            lock.release()

    def _search(self, arguments: list[str], sweep_dir: Path) -> Any:
        """`hparams_search=<name>`: Optuna trials as job folders through the launcher (mlcap.search)."""
        from mlcap.runs import RunFolderError, lock_folder
        from mlcap.search import OptunaSearch, SearchSpec, launcher_parallel, split_arguments

        assert self.config is not None and self.hydra_context is not None
        config, loader = self.config, self.hydra_context.config_loader
        try:
            n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=1)
            check_n_jobs(n_jobs)
            base = split_arguments(arguments)
            parser = OverridesParser.create(config_loader=loader)
            swept = [o.input_line for o in parser.parse_overrides(base) if o.is_sweep_override()]
            if swept or self.points or self.axes or self.params:
                raise ValueError(
                    f"a search varies the keys of hparams_search.params itself; drop the grid "
                    f"({', '.join(swept) or 'sweep= points/axes'}) or run it as a sweep without hparams_search"
                )
            sweep_dir.mkdir(parents=True, exist_ok=True)
            spec = SearchSpec.from_config(config.hparams_search, sweep_dir)
            lock = lock_folder(sweep_dir)  # one command at a time per folder
        except (ValueError, RunFolderError) as err:
            raise SystemExit(f"error: {err}") from None
        try:
            OmegaConf.save(config, sweep_dir / "multirun.yaml")
            search = OptunaSearch(
                spec,
                sweep_dir,
                base,
                compose=lambda overrides: loader.load_sweep_config(config, overrides),
                launch=lambda job_lists, start: [
                    r for batch in self._launch(job_lists, start) for r in batch
                ],
                parallel=launcher_parallel(n_jobs, self.max_batch_size),
            )
            return [search.run()]
        except ValueError as err:  # SearchError, or a trial whose settings or folder cannot start
            raise SystemExit(f"error: {err}") from None
        finally:
            lock.release()

    def _launch(self, job_lists: list[list[str]], first_idx: int = 0) -> list[list[JobReturn]]:
        size = self.max_batch_size or max(len(job_lists), 1)
        returns: list[list[JobReturn]] = []
        for start in range(0, len(job_lists), size):
            batch = job_lists[start : start + size]
            results = list(self.launcher.launch(batch, initial_job_idx=first_idx + start))
            for overrides, result in zip(batch, results, strict=True):
                # A job that raised is logged (and recorded in its failed.json); the others go on.
                if result.status == JobStatus.FAILED:
                    log.error("job %s failed: %r", overrides, getattr(result, "_return_value", None))
            returns.append(results)
        return returns


def check_n_jobs(n_jobs: Any) -> None:
    """The joblib launcher's jobs side by side: -1 (one per core) or at least 1 (mlcap.run_facts.cpu_threads
    shares the cores among them); joblib itself would fail on 0 with a traceback once the sweep has started."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or not (n_jobs == -1 or n_jobs >= 1):
        shown = (
            repr(n_jobs) if isinstance(n_jobs, str) else str(n_jobs).lower() if n_jobs is not None else "null"
        )
        raise ValueError(
            f"hydra.launcher.n_jobs={shown} is not allowed: it must be an integer, -1 (one job per core) or >= 1"
        )


def _plain(node: Any) -> Any:
    """DictConfig/ListConfig -> plain Python, so values compare and format like literals."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a scheduler) raises KeyboardInterrupt like Ctrl-C, so the launcher stops its
    jobs (joblib kills its workers, the mlcap launcher asks each job to stop) instead of leaving them running,
    orphaned and holding their folders' locks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill_joblib_workers() -> None:
    """`hydra/launcher=joblib`: joblib leaves loky's reusable workers running (still training) when the sweep is
    interrupted; kill them, their folder locks die with them."""
    import sys

    if "joblib" in sys.modules:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)
