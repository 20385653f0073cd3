"""Hydra launcher `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): submitit's SLURM launcher with two
changes, so a sweep through SLURM keeps the guarantees of a local one (docs/runs.md#slurm).

* A job that SLURM ends before it writes its result (scancel, the time limit, out of memory) is recorded in
  its folder's failed.json with SLURM's state, and the other jobs' results are still collected: submitit's
  launcher returns nothing once one job raises, and the sweep report would then never be written.
* The job states come from `sacct` where the cluster keeps accounting, else from `squeue -t all` (finished
  jobs stay there for the cluster's MinJobAge): without either, submitit waits forever for a job killed
  before it wrote its result.

Imported by every Hydra app during plugin discovery: only the (cheap) launcher config is imported here;
submitit itself is imported when a sweep launches.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# The header of the job-state table submitit parses (sacct --parsable2); squeue's answer gets it too.
_STATUS_FIELDS = "JobID|State|NodeList"


@dataclass
class MlcapSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.mlcap_slurm_launcher.MlcapSlurmLauncher"
    # Longest wait between two state queries (sacct/squeue) while jobs run; submitit's own is 600 s.
    poll_s: int = 60
    # A local launcher's knob, accepted and ignored (array_parallelism says how many jobs run at once).
    n_jobs: int | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="mlcap_slurm", node=MlcapSlurmConf, provider="mlcap"
)


def status_command(job_ids: Sequence[str]) -> list[str]:
    """sacct's answer in the format submitit parses (JobID|State|NodeList), else squeue's, same format."""
    ids = ",".join(job_ids)
    script = (
        f"sacct -o JobID,State,NodeList --parsable2 -j {ids} 2>/dev/null || "
        f"{{ echo '{_STATUS_FIELDS}'; squeue -h -r -t all -o '%i|%T|%N' -j {ids}; }}"
    )
    return ["sh", "-c", script]


class MlcapSlurmLauncher(SlurmLauncher):
    """submitit's SLURM launcher; every job comes back, a job SLURM killed as FAILED with its state."""

    def __init__(self, **params: Any) -> None:
        self.poll_s = int(params.pop("poll_s", 60))
        params.pop("n_jobs", None)
        super().__init__(**params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton

        assert self.config is not None and len(job_overrides) > 0
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        base = _base_keys()  # submitit's names for every executor; the others take the slurm_ prefix
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        arguments = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            arguments.append(
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            )
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        watcher = _watcher(self.poll_s)
        for job in jobs:
            job.watcher = watcher  # the state query above, for these jobs only (submitit's is class-wide)
        log.info(
            "submitted SLURM array %s (%d jobs); logs in %s",
            jobs[0].job_id.split("_")[0],
            len(jobs),
            sweep_dir / ".submitit",
        )
        return [self._outcome(job, list(o)) for job, o in zip(jobs, job_overrides, strict=True)]

    def _outcome(self, job: Any, overrides: list[str]) -> JobReturn:
        """The job's own JobReturn; for a job SLURM ended without a result, a FAILED one and its failed.json."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError) as err:
            state = job.watcher.get_state(job.job_id, mode="force")
            message = (
                f"SLURM job {job.job_id} ended {state} before it finished (scancel, the time limit "
                "hydra.launcher.timeout_min, or memory: hydra.launcher.mem_gb); its log: "
                f"{job.paths.stderr}. Re-run the same command to run it again"
            )
            log.error("%s: %s", " ".join(filter_overrides(overrides)), message)
            self._record_failure(overrides, message, type(err).__name__)
            return JobReturn(
                overrides=overrides, status=JobStatus.FAILED, _return_value=RuntimeError(message)
            )

    def _record_failure(self, overrides: list[str], message: str, kind: str) -> None:
        """failed.json in the job's folder, unless the job recorded its own result or failure."""
        from mlcap.runs import FAILED_FILE, METRICS_FILE, write_json

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        folder = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        if (folder / METRICS_FILE).is_file() or (folder / FAILED_FILE).is_file():
            return
        write_json(folder / FAILED_FILE, {"error": message, "traceback": kind})


def _base_keys() -> set[str]:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    return set(OmegaConf.structured(BaseQueueConf).keys())


def _watcher(poll_s: int) -> Any:
    """submitit's SLURM state watcher, falling back from sacct to squeue (see the module doc)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class Watcher(SlurmInfoWatcher):
        def _make_command(self) -> list[str] | None:
            to_check = sorted({x.split("_")[0] for x in self._registered - self._finished})
            return status_command(to_check) if to_check else None

    return Watcher(delay_s=poll_s)
