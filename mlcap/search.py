"""Hyper-parameter search (`-m hparams_search=<name>`): an Optuna ask/tell loop over the sweep's launcher.

Why Optuna directly and not Hydra's Optuna sweeper: that plugin owns the trial inside its own process, so a
job cannot report epochs to it (no pruning), its `interval(...)` search-space strings changed meaning across
Optuna releases, and it knows nothing of mlcap's run-folder rules. Here the mlcap sweeper asks the study for
trials, runs each as an ordinary job folder through the same launcher (joblib: side by side), and tells the
study each trial's result; the job reports each epoch to the same storage (mlcap.pruning) and stops when the
pruner says so. The space and its checks are mlcap.search_space; trial folders and their files are
mlcap.search_trials; this module is the ask/tell loop.

Re-running the same command continues the study from its storage: finished and pruned trials are kept, a trial
left running by an interrupted command is run again under its own number and values (its folder resumes from
its last checkpoint), and new trials are asked until `n_trials` have finished. A different search space or
base command in the same folder is refused before anything runs.

Torch-free: the sweeper imports it in the Hydra process; optuna is imported when a search runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlcap.runs import write_json
from mlcap.search_space import MONITOR, OBJECTIVE, SearchError, SearchSpec, distribution, open_storage
from mlcap.search_trials import (
    CALLBACK_KEY,
    PRUNED_FILE,
    SEARCH_FILE,
    TRIAL_FILE,
    TrialJobs,
    trial_folder,
    trial_overrides,
    trial_result,
)

__all__ = [
    "CALLBACK_KEY",
    "MONITOR",
    "OBJECTIVE",
    "PRUNED_FILE",
    "SEARCH_FILE",
    "TRIAL_FILE",
    "OptunaSearch",
    "SearchError",
    "SearchSpec",
    "TrialJobs",
    "distribution",
    "launcher_parallel",
    "open_storage",
    "split_arguments",
    "trial_folder",
    "trial_overrides",
    "trial_result",
]

log = logging.getLogger(__name__)

_SIGNATURE_ATTR = "mlcap_search"


class OptunaSearch:
    """The ask/tell loop: batches of trials as jobs through the launcher, results told to the study."""

    def __init__(
        self,
        spec: SearchSpec,
        sweep_dir: Path,
        base_overrides: Sequence[str],
        compose: Callable[[list[str]], DictConfig],
        launch: Callable[[list[list[str]], int], Sequence[Any]],
        parallel: int,
    ) -> None:
        self.spec, self.sweep_dir, self.base = spec, sweep_dir, list(base_overrides)
        self.compose, self.launch, self.parallel = compose, launch, max(1, parallel)
        self.planned: list[Any] = []

    def open_study(self) -> Any:
        """Create or load the study; refuse one that searched another space or base command."""
        import optuna
        from hydra.utils import instantiate

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = instantiate(self.spec.sampler) if self.spec.sampler else None
        pruner = instantiate(self.spec.pruner) if self.spec.pruner else optuna.pruners.NopPruner()
        study = optuna.create_study(
            storage=open_storage(self.spec.storage),
            sampler=sampler,
            pruner=pruner,
            study_name=self.spec.study_name,
            direction=self.spec.direction,
            load_if_exists=True,
        )
        from mlcap.runs import run_identity
        from mlcap.settings import resolved_task_config

        base_config = self.compose([*self.base, "hydra.sweep.subdir=base"])
        identity = run_identity(resolved_task_config(base_config, self.sweep_dir / "base"))
        signature = json.loads(json.dumps(self.spec.signature(identity), default=str))
        recorded = study.user_attrs.get(_SIGNATURE_ATTR)
        if recorded is None:
            if study.trials:
                raise SearchError(
                    f"study {self.spec.study_name!r} in {self.spec.storage} holds trials of another tool; "
                    "use another hparams_search.study_name or hydra.sweep.dir"
                )
            study.set_user_attr(_SIGNATURE_ATTR, signature)
        elif recorded != signature:
            changed = sorted(k for k in signature if k != "config" and signature[k] != recorded.get(k))
            there, here = recorded.get("config") or {}, signature["config"]
            changed += sorted(k for k in {*there, *here} if there.get(k) != here.get(k))
            recorded, signature = {**recorded, **there}, {**signature, **here}
            raise SearchError(
                f"{self.sweep_dir} holds the study {self.spec.study_name!r} of another search ({', '.join(changed)} "
                f"differ: there {_brief(recorded, changed)}, here {_brief(signature, changed)}); nothing was run. "
                "Use another hydra.sweep.dir, or re-run with the same search and overrides"
            )
        if self.spec.direction != study.direction.name.lower():
            raise SearchError(
                f"study direction is {study.direction.name.lower()}, hparams_search.direction differs"
            )
        return study

    def run(self) -> list[Any]:
        """Run trials until n_trials have finished (complete or pruned); return the launcher's results."""
        from optuna.trial import TrialState

        study = self.open_study()
        write_json(self.sweep_dir / SEARCH_FILE, self._record())
        distributions = {key: distribution(key, spec) for key, spec in self.spec.params.items()}
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        resumed = [t for t in trials if t.state == TrialState.RUNNING]
        self.planned = [
            j for t in trials if t.state != TrialState.RUNNING for j in self._jobs(t.number, t.params)
        ]
        log.info(
            "search %r in %s: %d of %d trials finished, %d interrupted to resume",
            self.spec.study_name,
            self.sweep_dir,
            done,
            self.spec.n_trials,
            len(resumed),
        )
        returns: list[Any] = []
        while done < self.spec.n_trials:
            batch: list[TrialJobs] = []
            while len(batch) < min(self.parallel, self.spec.n_trials - done):
                if resumed:
                    frozen = resumed.pop(0)
                    log.info("resuming interrupted trial %d", frozen.number)
                    number, params = frozen.number, dict(frozen.params)
                else:
                    trial = study.ask(distributions)
                    number, params = trial.number, {k: trial.params[k] for k in self.spec.params}
                batch.append(TrialJobs(number, params, self._jobs(number, params)))
            returns += self._run_batch(study, batch)
            finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if not finished:
                log.error("every trial so far failed (see their failed.json): the search stops here")
                break
            # Failed trials count here too, so this command ends; a re-run asks new ones in their place.
            done += len(batch)
        return returns

    def _jobs(self, number: int, params: Mapping[str, Any]) -> list[Any]:
        from mlcap.sweep import SweepJob

        folds = self.spec.folds
        return [
            SweepJob(
                trial_folder(number, params, fold),
                [*self.base, *trial_overrides(number, params, folds, fold)],
            )
            for fold in (range(folds) if folds else [None])
        ]

    def _run_batch(self, study: Any, batch: list[TrialJobs]) -> list[Any]:
        from optuna.trial import TrialState

        from mlcap.sweep import check_jobs, job_overrides, write_plan

        jobs = [job for trial in batch for job in trial.jobs]
        try:
            planned = check_jobs(self.sweep_dir, jobs, self.compose)
        except ValueError:
            for trial in batch:  # asked but never run: recorded as failed, so a re-run asks afresh
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            raise
        folder_of = {tuple(job.overrides): job.name for job, _ in planned}
        for trial in batch:
            trial.jobs = [
                type(job)(folder_of.get(tuple(job.overrides), job.name), job.overrides) for job in trial.jobs
            ]
            for fold, job in enumerate(trial.jobs):
                record = {
                    "study_name": self.spec.study_name,
                    "storage": self.spec.storage,
                    "number": trial.number,
                    "pruner": self.spec.pruner,
                    "fold": fold if self.spec.folds else None,
                }
                write_json(self.sweep_dir / job.name / TRIAL_FILE, record)
        self.planned += jobs
        write_plan(self.sweep_dir, self.planned, [])
        todo = [(job, state) for job, state in planned if state != "finished"]
        # The sweep folder as an override: the jobs are composed without hparams_search, which may have set it.
        here = f"hydra.sweep.dir='{self.sweep_dir}'"
        job_lists = [[*job_overrides(job), here] for job, _ in todo]
        results = list(self.launch(job_lists, len(self.planned) - len(jobs))) if todo else []
        for trial in batch:
            state, value = trial_result(self.sweep_dir, [job.name for job in trial.jobs])
            if state == "complete":
                study.tell(trial.number, value)
            elif state == "pruned":
                study.tell(trial.number, state=TrialState.PRUNED)
            else:
                study.tell(trial.number, state=TrialState.FAIL)
            log.info(
                "trial %d %s%s: %s",
                trial.number,
                state,
                f" ({value:.4f})" if value is not None else "",
                trial.params,
            )
        return results

    def _record(self) -> dict[str, Any]:
        return {
            "study_name": self.spec.study_name,
            "storage": self.spec.storage,
            "params": self.spec.params,
            "folds": self.spec.folds,
            "direction": self.spec.direction,
            "objective": OBJECTIVE,
            "base_overrides": self.base,
        }


def split_arguments(arguments: Sequence[str]) -> list[str]:
    """The command line's task overrides without the search's own keys (which are not the jobs' config)."""
    return [a for a in arguments if not a.lstrip("+~").split("=", 1)[0].startswith("hparams_search")]


def launcher_parallel(n_jobs: Any, max_batch_size: int | None) -> int:
    """Trials run at once: the joblib launcher's n_jobs (-1: one per core), capped by max_batch_size."""
    parallel = (os.cpu_count() or 1) if n_jobs in (-1, None) else int(n_jobs)
    return min(parallel, max_batch_size) if max_batch_size else parallel


def _brief(record: Mapping[str, Any], keys: Sequence[str]) -> str:
    return "; ".join(f"{k}={json.dumps(record.get(k), default=str)}" for k in keys)
