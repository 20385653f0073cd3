"""Training task: compose data, word vectors, model and trainer from a Hydra config; return the run's metrics."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from mlcap.calibration import calibrate, cross_fitted_f1
from mlcap.captioning import is_captioner
from mlcap.checkpoints import check_resumable, check_same_network, load_checkpoint
from mlcap.console import quiet_libraries
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.datamodule import build_datamodule as datamodule_from
from mlcap.data.word_vectors import train_word_vectors
from mlcap.errors import ExpectedError, debugging, expected_error, one_line
from mlcap.extraction import prepare_inputs
from mlcap.inference import probabilities
from mlcap.metrics import classification_table, decide_labels, field_metrics, samples_f1
from mlcap.models.fusion import inference_size_bytes
from mlcap.models.image_encoders import build_backbone
from mlcap.models.lit_module import MultiLabelClassifier
from mlcap.models.sentence_encoder import sentence_source
from mlcap.runs import (
    CONFIG_FILE,
    FAILED_FILE,
    FINISHED,
    LAST_CHECKPOINT,
    METRICS_FILE,
    RunFolderError,
    atomic_path,
    check_folder,
    is_volatile,
    launched_rank,
    lock_folder,
    planned_jobs,
    read_json,
    sweep_varied_keys,
    write_atomic,
    write_json,
)
from mlcap.settings import SettingsError, model_settings, shown, validate
from mlcap.tensorboard import log_hparams

log = logging.getLogger(__name__)

SIZE_LIMIT_MB = 100.0


class EpochHistory(Callback):
    """Keeps each epoch's logged scalars so metrics.json can report the losses of the best epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        self.epochs.append({"epoch": trainer.current_epoch, **row})

    # Saved in checkpoints, so a resumed run still reports the epochs before the interruption.
    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict["epochs"])


def _checkpoint_callback(callbacks: list[Callback]) -> ModelCheckpoint:
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor:
            return callback
    raise ValueError(
        "the callbacks config needs a ModelCheckpoint with a monitor (callbacks.model_checkpoint)"
    )


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
        log.info("SLURM job %s on %s", _slurm_job(), os.environ.get("SLURMD_NODENAME"))
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
    metrics = {
        **task.results(trainer, best, best_path, datamodule, cfg, output_dir),
        **_run_facts(best, model, history, _saved_epoch(best_path, history, checkpoint.monitor)),
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


def classifier_results(
    trainer: pl.Trainer,
    best: MultiLabelClassifier,
    best_path: str,
    datamodule: CaptionImageDataModule,
    cfg: DictConfig,
    output_dir: Path,
) -> dict[str, Any]:
    """The classifier's validation results: evaluate the best checkpoint, calibrate, write per_class tables."""
    evaluation = evaluate(best, datamodule, cfg)
    threshold = calibrate_threshold(best, best_path, evaluation, cfg)
    return {**write_tables(best, evaluation, threshold, output_dir), **evaluation.summary()}


def check_classifier(cfg: DictConfig) -> None:
    """The classifier's parts and encoders, checked before any data is read."""
    check_parts(cfg)
    check_encoders(cfg)


def _slurm_job() -> str:
    """The job as squeue and scancel name it: <array>_<task> for an array's task (its SLURM_JOB_ID is its own
    number, and the first task's is the whole array's)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = os.environ["SLURM_JOB_ID"]
    return f"{array}_{task} (SLURM_JOB_ID {job})" if array and task else job


def _finished(output_dir: Path, task: Task) -> dict[str, Any]:
    done = read_json(output_dir / METRICS_FILE)
    log.info("%s holds this run, finished (%s %.4f): skipping", output_dir, task.title, done[task.score])
    return done


class RunClock:
    """When a run started and how long its training and the whole run took, for metrics.json."""

    def __init__(self) -> None:
        self.start, self.start_wall = time.perf_counter(), time.time()
        self.train_seconds = 0.0

    def trained(self) -> None:
        self.train_seconds = time.perf_counter() - self.start

    def facts(self) -> dict[str, Any]:
        return {
            "train_time_s": round(self.train_seconds, 2),
            "threads": torch.get_num_threads(),
            "started": datetime.fromtimestamp(self.start_wall).isoformat(timespec="milliseconds"),
            "finished": datetime.now().isoformat(timespec="milliseconds"),
            "wall_time_s": round(time.perf_counter() - self.start, 2),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),  # null unless the run was a SLURM job
        }


def cpu_threads(threads: int | None) -> int:
    """`threads`, else in a sweep whose launcher runs n_jobs side by side an equal share of the cores, else
    all of them (what torch picks by itself). A sweep of fewer jobs than n_jobs shares among its jobs. A
    SLURM job (hydra/launcher=slurm) takes its `cpus_per_task`: it holds them alone, and without cgroups the
    node's other cores are visible to it."""
    cores = len(os.sched_getaffinity(0))
    if threads:
        return threads
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return cores
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.launcher.get("cpus_per_task"):  # submitit's launchers: one allocation per job
        return int(hydra_cfg.launcher.cpus_per_task)
    n_jobs = int(hydra_cfg.launcher.get("n_jobs") or 1)
    side_by_side = cores if n_jobs < 0 else min(n_jobs, cores)  # joblib: -1 is one job per core
    planned = planned_jobs(Path(hydra_cfg.sweep.dir))
    if planned:
        side_by_side = min(side_by_side, planned)
    return max(1, cores // side_by_side)


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


def check_parts(cfg: DictConfig) -> None:
    """Fail before any data is read when the loss, optimizer or scheduler node does not build (a key or value
    its `_target_` refuses, which the settings cannot know): each is built once as the model builds it, on a
    dummy parameter (weighted_bce with a dummy pos_weight), and dropped; a failure is one SettingsError line."""
    nodes: dict[str, Any] = {
        name: OmegaConf.to_container(cfg.model[name], resolve=True) if cfg.model[name] is not None else None
        for name in ("loss", "optimizer", "scheduler")
    }

    def built(name: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except Exception as err:  # noqa: BLE001 - whatever the target raises, this node's settings are at fault
            cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
            options = ", ".join(f"{k}={shown(v)}" for k, v in nodes[name].items() if not k.startswith("_"))
            problem = " ".join(f"{type(cause).__name__}: {cause}".split())
            target = nodes[name]["_target_"]
            raise SettingsError(f"model.{name}={target}({options}) is not allowed: {problem}") from None

    loss = dict(nodes["loss"])
    if loss.get("pos_weight") == "???":  # filled from the train split when the model is built
        loss["pos_weight"] = [1.0]
    built("loss", lambda: hydra.utils.instantiate(loss))
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = built("optimizer", lambda: hydra.utils.instantiate(nodes["optimizer"])([parameter]))
    if nodes["scheduler"] is not None:
        lrs = [group["lr"] for group in optimizer.param_groups]
        schedule = nodes["scheduler"]
        built("scheduler", lambda: hydra.utils.instantiate(schedule)(optimizer, max_lr=lrs, total_steps=100))


def check_encoders(cfg: DictConfig) -> None:
    """Fail before any data is read when an encoder's weights are not at hand (offline hub, missing file).

    A timm backbone is built once here and dropped (its weights then sit in the hub cache for the real
    build); the sentence encoder's source is resolved without loading it.
    """
    encoder = cfg.model.image_encoder
    if encoder.get("weights") is not None and encoder.pretrained:
        build_backbone(encoder.name, True, encoder.weights)
    if model_settings(cfg.model).uses_sentence_encoder:
        sentence_source(cfg.model.sentence_model)


def build_datamodule(cfg: DictConfig) -> CaptionImageDataModule:
    """Read (through the data node's reader), check, split and tokenise the rows (the model's frozen parts run
    later: mlcap.extraction)."""
    datamodule = datamodule_from(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: CaptionImageDataModule) -> MultiLabelClassifier:
    """The LightningModule from cfg.model, with what the data decides (its metadata, word vectors, and the
    statistics a loss asks for)."""
    assert datamodule.vocab is not None
    vectors = None
    if model_settings(cfg.model).uses_rnn:
        vectors = train_word_vectors(
            datamodule.train_token_lists,
            datamodule.vocab,
            cfg.model.word_vectors,
            cfg.model.word_dim,
            seed=cfg.seed,
        )
    model = MultiLabelClassifier(
        model=model_config(cfg, datamodule),
        data=datamodule.metadata().to_dict(),
        threshold=cfg.threshold,
        tta=cfg.tta,
        embedding_init=vectors,
    )
    datamodule.use_inputs(prepare_inputs(datamodule, model.net.image_encoder, model.net.sentence_encoder))
    log.info(
        "model size as stored for inference: %.1f MB (the limit is %.0f MB; Lightning's summary below assumes "
        "4 bytes for every parameter, half-precision frozen weights included)",
        inference_size_bytes(model.net) / 1e6,
        SIZE_LIMIT_MB,
    )
    return model


def model_config(cfg: DictConfig, datamodule: CaptionImageDataModule) -> dict[str, Any]:
    """cfg.model resolved to plain containers (as the checkpoint keeps it), with the per-label weights a loss
    asks for (`pos_weight: ???`, model/loss=weighted_bce) computed on the train split."""
    model: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[assignment]
    loss = cfg.model.loss
    if "pos_weight" in loss.keys() and OmegaConf.is_missing(loss, "pos_weight"):  # noqa: SIM118 (`in` skips ???)
        model["loss"]["pos_weight"] = positive_weights(datamodule)
    return model


def build_trainer(cfg: DictConfig) -> tuple[pl.Trainer, ModelCheckpoint, EpochHistory]:
    """Lightning's Trainer with the configured callbacks and loggers, plus the epoch history for metrics.json."""
    callbacks: list[Callback] = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    history = EpochHistory()
    callbacks.append(history)
    checkpoint = _checkpoint_callback(callbacks)
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values()]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    return trainer, checkpoint, history


def load_best(
    checkpoint: ModelCheckpoint,
    model: pl.LightningModule,
    output_dir: Path,
    model_class: type[pl.LightningModule] = MultiLabelClassifier,
) -> tuple[Any, str]:
    """The best checkpoint's model, from this run's own folder (fast_dev_run and friends save none: then the
    weights in memory).

    Lightning restores the best path a resumed checkpoint recorded, which may lie in another run's folder
    (`ckpt_path=` from another run) or where this folder was before it moved: only a file in this run's
    checkpoints folder is this run's, so another run's files are never read as ours or rewritten.
    """
    recorded = checkpoint.best_model_path or checkpoint.last_model_path
    if not recorded:
        return model, ""
    own = output_dir / "checkpoints" / Path(recorded).name
    if not own.is_file():
        raise ExpectedError(
            f"training saved no checkpoint in {own.parent}: the run resumed from a checkpoint already at "
            "trainer.max_epochs (or early-stopped), so no epoch ran here. Raise trainer.max_epochs to train on, "
            "or predict with that checkpoint directly"
        )
    best = model_class.load_from_checkpoint(own, load_pretrained=False, map_location="cpu")
    return best, str(own)


@dataclass
class Evaluation:
    """The best model's validation probabilities and the F1 figures that do not depend on calibration."""

    probs: torch.Tensor
    target: torch.Tensor
    tta: bool
    uncalibrated_f1: float
    flip_tta_f1: float | None  # what test-time flips would give (uncalibrated), whenever views are cached
    calibration: str = "none"
    crossfit_f1: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "val_samples_f1_uncalibrated": self.uncalibrated_f1,
            "threshold_calibration": self.calibration,
            "val_samples_f1_calibrated_crossfit": self.crossfit_f1,
            "tta": self.tta,
            "val_samples_f1_flip_tta_uncalibrated": self.flip_tta_f1,
        }


def evaluate(best: MultiLabelClassifier, datamodule: CaptionImageDataModule, cfg: DictConfig) -> Evaluation:
    """Validation probabilities of the best model through Lightning, on the trainer's accelerator."""
    accelerator, precision = cfg.trainer.accelerator, cfg.trainer.precision
    views = (
        datamodule.view_dataloaders("val")
        if datamodule.serves_features and datamodule.cache_views > 1
        else []
    )
    probs = probabilities(best, views if cfg.tta else datamodule.val_dataloader(), accelerator, precision)
    target = datamodule.labels("val")

    def f1(p: torch.Tensor) -> float:
        return float(samples_f1(decide_labels(p, best.threshold).int(), target.int()))

    flips = (probs if cfg.tta else probabilities(best, views, accelerator, precision)) if views else None
    return Evaluation(probs, target, cfg.tta, f1(probs), f1(flips) if flips is not None else None)


def calibrate_threshold(
    best: MultiLabelClassifier, best_path: str, evaluation: Evaluation, cfg: DictConfig
) -> float | list[float]:
    """Tune the threshold on the validation split if asked; store it in the model and its checkpoint."""
    mode = cfg.threshold_calibration
    threshold, _ = calibrate(evaluation.probs, evaluation.target, mode)
    evaluation.calibration = mode
    if threshold is None:
        return best.hparams["threshold"]
    evaluation.crossfit_f1 = cross_fitted_f1(evaluation.probs, evaluation.target, mode, seed=cfg.seed)
    best.hparams["threshold"] = threshold
    if best_path:
        set_checkpoint_threshold(Path(best_path), threshold)
    log.info("calibrated %s threshold on the validation split: %s", mode, threshold)
    return threshold


def write_tables(
    best: MultiLabelClassifier, evaluation: Evaluation, threshold: float | list[float], output_dir: Path
) -> dict[str, Any]:
    """per_class.csv / per_class.md (by label name), the averaged precision/recall/F1 they hold and the field's
    metrics (mAP, CP ... OF1 at the threshold), for metrics.json."""
    preds = decide_labels(evaluation.probs, best.threshold).int()
    table = classification_table(preds.numpy(), evaluation.target.int().numpy(), best.label_names)
    write_atomic(output_dir / "per_class.csv", table.to_csv(index_label="label"))
    write_atomic(output_dir / "per_class.md", table.to_markdown(floatfmt=".3f") + "\n")
    averages = {
        f"val_{avg.split()[0]}_{metric}": float(table.loc[avg, metric])
        for avg in ("micro avg", "macro avg", "weighted avg", "samples avg")
        for metric in ("precision", "recall", "f1")
    }
    field = {
        f"val_{k}": v for k, v in field_metrics(evaluation.probs, preds, evaluation.target.int()).items()
    }
    return {"val_samples_f1": averages["val_samples_f1"], **averages, **field, "threshold": threshold}


def _run_facts(
    best: MultiLabelClassifier, model: MultiLabelClassifier, history: EpochHistory, best_epoch: int | None
) -> dict[str, Any]:
    row = next((e for e in history.epochs if e["epoch"] == best_epoch), {})
    size_mb = inference_size_bytes(best.net) / 1e6
    return {
        "val_loss": row.get("val/loss"),
        "train_loss": row.get("train/loss"),
        "best_epoch": best_epoch,
        "epochs": len(history.epochs),
        "model_size_mb": round(size_mb, 3),
        "under_100mb": size_mb <= SIZE_LIMIT_MB,
        "parameters": sum(p.numel() for p in best.net.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _saved_epoch(best_path: str, history: EpochHistory, monitor: str | None) -> int | None:
    """The epoch whose weights the best checkpoint holds (so losses and F1 in metrics.json are one epoch's);
    without a checkpoint, the history's best."""
    if best_path:
        return int(load_checkpoint(best_path)["epoch"])
    scored = [e for e in history.epochs if monitor in e]
    return int(scored[int(np.argmax([e[monitor] for e in scored]))]["epoch"]) if scored else None


def positive_weights(datamodule: CaptionImageDataModule) -> list[float]:
    """negatives / positives per label on the train split (labels never seen: as if seen once; the loss caps
    them)."""
    labels = datamodule.labels("train")
    positives = labels.sum(0)
    weights = (len(labels) - positives) / positives.clamp(min=1)
    return [round(float(w), 4) for w in weights]


def set_checkpoint_threshold(path: Path, threshold: float | list[float]) -> None:
    """Store a calibrated threshold in a checkpoint, atomically: a crash never leaves a half-written file."""
    checkpoint = load_checkpoint(path)
    checkpoint["hyper_parameters"]["threshold"] = threshold
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


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


@dataclass(frozen=True)
class Task:
    """What differs between the models the model group offers (the classifier, model=captioner) in the
    recipe: checks before the data is read, how the model is built, what the best checkpoint is scored by and
    written as, and the metrics.json key a sweep optimises. The rest of the recipe is shared."""

    check: Callable[[DictConfig], None]
    build_model: Callable[[DictConfig, CaptionImageDataModule], pl.LightningModule]
    results: Callable[..., dict[str, Any]]
    model_class: type[pl.LightningModule]
    score: str
    title: str  # the score as the log names it


CLASSIFIER = Task(
    check_classifier,
    build_model,
    classifier_results,
    MultiLabelClassifier,
    "val_samples_f1",
    "val samples-F1",
)


def task_for(cfg: DictConfig) -> Task:
    """The classifier, or the captioner when cfg.model is conf/model/captioner.yaml (mlcap.captioning)."""
    if not is_captioner(cfg.model):
        return CLASSIFIER
    from mlcap.captioning.task import SCORE, build_captioner, caption_results
    from mlcap.models.captioner import Captioner

    return Task(lambda _cfg: None, build_captioner, caption_results, Captioner, SCORE, "val CIDEr-D")


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
