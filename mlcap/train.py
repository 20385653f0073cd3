"""Training task: compose data, word vectors, model and trainer from a Hydra config; return the run's metrics.

The recipe only: what differs between the classifier and the captioner is their Task (mlcap.task); the
callbacks, checkpoint edits and run facts it uses live in mlcap.callbacks, mlcap.checkpoints, mlcap.run_facts;
the Hydra task that runs it as a (sweep) job is mlcap.jobs.run_job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from mlcap.callbacks import EpochHistory, monitored_checkpoint
from mlcap.captioning import is_captioner
from mlcap.checkpoints import check_resumable, check_same_network, load_best, saved_epoch
from mlcap.console import quiet_libraries
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.datamodule import build_datamodule as datamodule_from
from mlcap.errors import ExpectedError
from mlcap.run_facts import RunClock, cpu_threads, model_facts, slurm_job
from mlcap.runs import (
    CONFIG_FILE,
    FINISHED,
    LAST_CHECKPOINT,
    METRICS_FILE,
    check_folder,
    is_volatile,
    launched_rank,
    read_json,
    write_atomic,
    write_json,
)
from mlcap.settings import validate
from mlcap.task import Task
from mlcap.tensorboard import log_hparams

log = logging.getLogger(__name__)


def train(cfg: DictConfig, compared: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train one model; write checkpoint, TensorBoard logs, per-class table and metrics.json into the run folder.

    The recipe: check settings and folder, build trainer, data and model, fit, evaluate the best checkpoint,
    calibrate, write results. Re-running into the same folder with the same config (mlcap.runs) skips a
    finished run and resumes an interrupted one from its last checkpoint. `compared`: the keys a sweep varies
    with this job's values, shown first in TensorBoard's HPARAMS tab.
    """
    clock = RunClock()
    quiet_libraries()
    if os.environ.get("SLURM_JOB_ID"):  # hydra/launcher=slurm: which SLURM job ran it (also in metrics.json)
        log.info("SLURM job %s on %s", slurm_job(), os.environ.get("SLURMD_NODENAME"))
    settings = validate(cfg)
    task = task_for(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if check_folder(output_dir, resolved) == FINISHED:  # type: ignore[arg-type]
        return _finished(output_dir, task)
    ckpt_path = _resume_from(cfg, output_dir)
    torch.set_num_threads(cpu_threads(cfg.get("threads")))
    pl.seed_everything(cfg.seed, workers=True)
    task.check(cfg)

    trainer, checkpoint, history = build_trainer(cfg)  # first: Lightning checks its own settings
    datamodule = build_datamodule(cfg)
    model = task.build_model(cfg, datamodule)
    # A sweep's varied keys, then the public keys (where files go and how fast are no hyperparameters).
    hparams = {**dict(compared or {}), **{k: v for k, v in settings.items() if not is_volatile(k)}}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)  # Lightning keeps them (hparams.yaml beside the event file)
    if launched_rank() == 0:  # DDP: the other ranks read the folder, never write it
        # Recorded once everything is built: a run that failed before training leaves no claim on the folder.
        write_atomic(output_dir / CONFIG_FILE, OmegaConf.to_yaml(resolved))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    _check_trained(trainer, cfg.data.batch_size)
    clock.trained()
    if not trainer.is_global_zero:
        return {}

    best, best_path = load_best(checkpoint, model, output_dir, task.model_class)
    # The epoch whose weights the best checkpoint holds (losses and F1 are one epoch's); without one, the
    # history's best.
    best_epoch = saved_epoch(best_path) if best_path else history.best_epoch(checkpoint.monitor)
    metrics = {
        **task.results(trainer, best, best_path, datamodule, cfg, output_dir),
        **model_facts(best, model, history.epochs, best_epoch),
        **clock.facts(),
        "checkpoint": str(best_path),
        "history": history.epochs,
    }
    write_json(output_dir / METRICS_FILE, metrics)
    log_comparison(trainer, hparams, list(compared or {}), metrics[task.score], task.score)
    log.info(
        "%s %.4f (epoch %s), model %.1f MB, %.0f s; results in %s",
        task.title,
        *(metrics[k] for k in (task.score, "best_epoch", "model_size_mb", "wall_time_s")),
        output_dir,
    )
    return metrics


def _finished(output_dir: Path, task: Task) -> dict[str, Any]:
    done = read_json(output_dir / METRICS_FILE)
    log.info("%s holds this run, finished (%s %.4f): skipping", output_dir, task.title, done[task.score])
    return done


def _check_trained(trainer: pl.Trainer, batch_size: int) -> None:
    """A fit without one training step has nothing to report (DDP: each process's share below one batch)."""
    if trainer.global_step == 0:
        raise ExpectedError(
            f"no training step ran: each of the {trainer.world_size} process(es) got fewer training rows than "
            f"data.batch_size={batch_size} (the last incomplete batch is dropped); lower data.batch_size or "
            "use fewer devices. No results are written for this run"
        )


def _resume_from(cfg: DictConfig, output_dir: Path) -> str | None:
    """An explicit ckpt_path, else the folder's last.ckpt (an interrupted run of the same config); either is
    checked before any work, so a damaged file is named with what to do rather than failing deep in fit()."""
    if cfg.get("ckpt_path") is not None:
        path = check_resumable(cfg.ckpt_path)
        check_same_network(path, OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
        return str(path)
    last = output_dir / LAST_CHECKPOINT
    if not last.is_file():
        return None
    log.info("resuming the interrupted run in %s from %s", output_dir, last)
    return str(check_resumable(last, automatic=True))


def build_datamodule(cfg: DictConfig) -> CaptionImageDataModule:
    """Read (through the data node's reader), check, split and tokenise the rows (the model's frozen parts run
    later: mlcap.extraction)."""
    datamodule = datamodule_from(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_trainer(cfg: DictConfig) -> tuple[pl.Trainer, ModelCheckpoint, EpochHistory]:
    """Lightning's Trainer with the configured callbacks and loggers, plus the epoch history for metrics.json."""
    callbacks: list[Callback] = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    history = EpochHistory()
    callbacks.append(history)
    checkpoint = monitored_checkpoint(callbacks)
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values()]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    return trainer, checkpoint, history


def log_comparison(
    trainer: pl.Trainer,
    hparams: Mapping[str, Any],
    varied: list[str],
    f1: float,
    score: str = "val_samples_f1",
) -> None:
    """TensorBoard's HPARAMS tab: the run's settings (varied keys marked) beside its best score (val
    samples-F1; the captioner's CIDEr-D) (other trackers: that figure as a metric)."""
    metric = {f"hp/best_{score}": f1}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            log_hparams(logger.experiment, hparams, varied, metric)
        else:  # CSV, MLflow: the same figure as a metric beside the run's hyperparameters
            logger.log_metrics(metric, step=trainer.global_step)
        logger.finalize("success")


def task_for(cfg: DictConfig) -> Task:
    """The classifier, or the captioner when cfg.model is conf/model/captioner.yaml (mlcap.captioning); each
    task's module is imported only when it is picked."""
    if is_captioner(cfg.model):
        from mlcap.captioning.task import CAPTIONER

        return CAPTIONER
    from mlcap.classifier_task import CLASSIFIER

    return CLASSIFIER
