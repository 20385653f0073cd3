"""The Hydra task train.py runs: one training job (mlcap.train) in its locked run folder; in a sweep a failing
job is recorded in its failed.json and the other jobs go on. Returns the task's score for the sweeper."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlcap.errors import debugging, expected_error, one_line
from mlcap.runs import FAILED_FILE, RunFolderError, launched_rank, lock_folder, sweep_varied_keys, write_json
from mlcap.train import task_for, train

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> float | None:
    """Hydra task: in a sweep a failing job is recorded in failed.json and the other jobs go on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = Path(cfg.paths.output_dir)
    try:
        # Held for the whole job, in sweeps too (their jobs are not checked by the single-run callback).
        lock = lock_folder(output_dir) if launched_rank() == 0 else None
    except RunFolderError as err:
        if not in_sweep:
            raise
        log.error("job in %s not run: %s", output_dir, err)  # no failed.json: the folder is another process's
        return None
    try:
        metrics = train(cfg, compared=_sweep_values(cfg) if in_sweep else None)
    except Exception as err:
        if not in_sweep:
            raise
        write_json(output_dir / FAILED_FILE, _record_failure(err, output_dir))
        return None
    finally:
        if lock is not None:
            lock.release()
    (output_dir / FAILED_FILE).unlink(missing_ok=True)
    return metrics.get(task_for(cfg).score)


def _record_failure(err: Exception, output_dir: Path) -> dict[str, str]:
    """A sweep job's failure for its failed.json, logged: an expected error (mlcap.errors) in one line, as
    train.py prints it alone (its traceback only with MLCAP_DEBUG=1); a bug with its traceback."""
    cause = expected_error(err)
    if cause is None or debugging():
        log.exception("job in %s failed", output_dir)
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    log.error("job in %s failed: %s", output_dir, one_line(cause))
    return {"error": one_line(cause), "traceback": ""}


def _sweep_values(cfg: DictConfig) -> dict[str, Any]:
    """This job's value of every key its sweep varies (config groups: the chosen option)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    values = {}
    for key in sweep_varied_keys(Path(hydra_cfg.sweep.dir)):
        values[key] = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
    return values
