"""Hydra sweeper plugin `hydra/sweeper=mlcap`: explicit points and one-at-a-time axes (see mlcap.sweep).

Hydra only instantiates plugins defined under the `hydra_plugins` namespace package, so the class lives
here; the expansion itself is in `mlcap.sweep`. Every Hydra app imports this module during plugin
discovery, so it must stay cheap to import (no torch, mlcap.sweep imported lazily).

No `from __future__ import annotations` here: Hydra executes this module before registering it in
sys.modules, and dataclasses cannot resolve string annotations of such a module.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class MlcapSweeperConf:
    _target_: str = "hydra_plugins.mlcap_sweeper.MlcapSweeper"
    max_batch_size: int | None = None
    # Extra overrides swept like command-line ones (cartesian), as in the basic sweeper.
    params: dict[str, str] | None = None
    # Explicit settings, each a mapping of override key -> value, e.g. [{model.caption: false}, ...].
    points: list[dict[str, Any]] | None = None
    # One-at-a-time grid: key -> values; each value runs with every other key at the composed config's.
    axes: dict[str, list[Any]] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="mlcap", node=MlcapSweeperConf, provider="mlcap")


class MlcapSweeper(BasicSweeper):
    """BasicSweeper plus points/axes, settings-named job folders, folder reuse checks and no early stop."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        points: list[dict[str, Any]] | None = None,
        axes: dict[str, list[Any]] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.points = _plain(points) or []
        self.axes = _plain(axes) or {}

    def _base_value(self, key: str) -> Any:
        """The composed config's value of an axis key (for a config group: the selected option)."""
        from mlcap.sweep import bare_key

        assert self.config is not None
        key = bare_key(key)
        choices = self.config.hydra.runtime.choices
        if key in choices:
            return choices[key]
        return OmegaConf.select(self.config, key, default=None, throw_on_missing=False)

    def sweep(self, arguments: list[str]) -> Any:
        from mlcap.sweep import (
            check_job_dirs,
            command_line_lists,
            expand_sweep,
            is_finished,
            sweep_points,
            write_plan,
        )

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        base = {key: self._base_value(key) for key in self.axes}
        jobs = expand_sweep(command_line_lists(parsed), sweep_points(self.points, self.axes, base))

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        runnable, conflicts = check_job_dirs(sweep_dir, jobs)
        for reason in conflicts.values():
            log.error("not running a job: %s", reason)
        if not runnable:  # leave the folder (and its plan) as the earlier sweep left it
            raise ValueError(
                f"every job folder of this sweep under {sweep_dir} holds a run with other overrides (see "
                "above); nothing was run. Use another hydra.sweep.dir or delete the old folders."
            )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_plan(sweep_dir, jobs, conflicts, list(self.axes))
        finished = [job for job in runnable if is_finished(sweep_dir, job)]
        for job in finished:
            log.info("already finished, not launched again: %s", sweep_dir / job.name)
        runnable = [job for job in runnable if job not in finished]
        log.info(
            "sweep of %d jobs into %s: %d to run, %d already finished, %d refused",
            len(jobs),
            sweep_dir,
            len(runnable),
            len(finished),
            len(conflicts),
        )

        # The folder name goes in as a Hydra override, so it is not among the job's task overrides.
        job_lists = [[*job.overrides, f"hydra.sweep.subdir='{job.name}'"] for job in runnable]
        chunks = self.split_overrides_to_chunks(job_lists, self.max_batch_size) if job_lists else []
        self.overrides = list(chunks)
        returns: list[list[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)  # composition errors surface before anything trains
            log.debug("validated %d job configs in %.2f s", len(batch), time.perf_counter() - tic)
            results = list(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            for overrides, result in zip(batch, results, strict=True):
                # Unlike BasicSweeper, a job that raised is logged and the sweep goes on with the others.
                if result.status == JobStatus.FAILED:
                    log.error("job %s failed: %r", overrides, getattr(result, "_return_value", None))
            initial_job_idx += len(batch)
            returns.append(results)
        return returns


def _plain(node: Any) -> Any:
    """DictConfig/ListConfig -> plain Python, so values compare and format like literals."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
