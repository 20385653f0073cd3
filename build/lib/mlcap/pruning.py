"""Lightning callback of a search trial (mlcap.search): report val/samples_f1 to the Optuna study each epoch and
stop training when the study's pruner says so.

Optuna's own PyTorchLightningPruningCallback (optuna-integration) raises TrialPruned out of `fit()`, which
would leave the trial's folder without results (recorded as failed). This one asks the trainer to stop
instead, so a pruned trial still evaluates its best checkpoint and writes metrics.json like any finished run
(its folder is then skipped on a re-run); `pruned.json` beside it tells the sweeper to record it as pruned.
The trial's study, storage and pruner are in the job folder's trial.json (written by the sweeper): they say
where results go, not what the run computes, so they stay out of the run's config; the trial number is in it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import Callback

from mlcap.runs import read_json, write_json
from mlcap.search import MONITOR, PRUNED_FILE, TRIAL_FILE, open_storage

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Reports `monitor` after every validation epoch to trial `trial`; stops the fit when it is pruned."""

    def __init__(self, trial: int, monitor: str = MONITOR) -> None:
        self.number, self.monitor = trial, monitor
        self.trial: Any = None
        self.step_offset = 0
        self.folder: Path | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import optuna

        self.folder = Path(trainer.default_root_dir)
        record_path = self.folder / TRIAL_FILE
        if not record_path.is_file():
            raise RuntimeError(
                f"{record_path} is missing: callbacks.optuna_pruning is set by `-m hparams_search=...` for its "
                "trials only; drop it from a plain run"
            )
        record = read_json(record_path)
        if record.get("number") != self.number:
            raise RuntimeError(
                f"{record_path} is trial {record.get('number')}, this run is trial {self.number}"
            )
        storage = open_storage(record["storage"])
        pruner = instantiate(record["pruner"]) if record.get("pruner") else optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=record["study_name"], storage=storage, pruner=pruner)
        study_id = storage.get_study_id_from_name(record["study_name"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        self.trial = optuna.trial.Trial(study, trial_id)
        # With k folds each fold reports its epochs at its own steps, so the pruner compares like with like.
        self.step_offset = (record.get("fold") or 0) * int(trainer.max_epochs or 0)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.trial is None or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        step = self.step_offset + trainer.current_epoch
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            assert self.folder is not None
            write_json(
                self.folder / PRUNED_FILE, {"epoch": trainer.current_epoch, self.monitor: float(value)}
            )
            log.info(
                "trial %d pruned after epoch %d (%s %.4f)",
                self.number,
                trainer.current_epoch,
                self.monitor,
                value,
            )
            trainer.should_stop = True
