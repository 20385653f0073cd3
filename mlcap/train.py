"""Training task: compose data, word vectors, model and trainer from a Hydra config; return the run's metrics."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from mlcap.calibration import calibrate, cross_fitted_f1
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.word_vectors import train_word_vectors
from mlcap.metrics import classification_table, decide_labels, samples_f1
from mlcap.models.fusion import inference_size_bytes
from mlcap.models.lit_module import MultiLabelClassifier, predict_probabilities

log = logging.getLogger(__name__)

SIZE_LIMIT_MB = 100.0
METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"


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


def finished_metrics(output_dir: Path) -> dict[str, Any] | None:
    """The metrics of a run that already finished in this folder (a re-run sweep skips it), else None."""
    path = output_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model; write checkpoint, TensorBoard logs, per-class table and metrics.json into the run folder.

    Re-running into the same folder (a sweep re-run with a fixed `hydra.sweep.dir`) skips a finished run and
    resumes an interrupted one from its last checkpoint.
    """
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    done = finished_metrics(output_dir)
    if done is not None:
        log.info(
            "%s already holds a finished run (val samples-F1 %.4f): skipping",
            output_dir,
            done["val_samples_f1"],
        )
        return done
    ckpt_path = cfg.get("ckpt_path")
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None and last.is_file():
        log.info("resuming the interrupted run in %s from %s", output_dir, last)
        ckpt_path = str(last)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    # A frozen backbone is in eval mode on purpose (its batch-norm statistics stay the pretrained ones).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

    datamodule: CaptionImageDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.vocab is not None
    vectors = None
    if cfg.model.caption:
        vectors = train_word_vectors(
            datamodule.train_token_lists,
            datamodule.vocab,
            cfg.model.word_vectors,
            cfg.model.word_dim,
            seed=cfg.seed,
        )
    data_config = OmegaConf.to_container(cfg.data, resolve=True)
    model: MultiLabelClassifier = hydra.utils.instantiate(
        cfg.model,
        _recursive_=False,
        _convert_="all",
        label_ids=list(datamodule.label_ids),
        vocab_tokens=datamodule.vocab.tokens,
        lr=cfg.lr,
        threshold=cfg.threshold,
        tta=cfg.get("tta", False),
        preprocessing=data_config,
        embedding_init=vectors,
        pos_weight=positive_weights(datamodule) if cfg.model.get("loss") == "weighted_bce" else None,
    )
    datamodule.attach_image_encoder(model.net.image_encoder)
    datamodule.attach_sentence_encoder(model.net.sentence_encoder)
    log.info(
        "model size as stored for inference: %.1f MB (the limit is %.0f MB; Lightning's summary below assumes "
        "4 bytes for every parameter, half-precision frozen weights included)",
        inference_size_bytes(model.net) / 1e6,
        SIZE_LIMIT_MB,
    )

    callbacks: list[Callback] = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    history = EpochHistory()
    callbacks.append(history)
    checkpoint = _checkpoint_callback(callbacks)
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values()]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}

    best_path = checkpoint.best_model_path or checkpoint.last_model_path
    if best_path:
        best = MultiLabelClassifier.load_from_checkpoint(best_path, load_pretrained=False, map_location="cpu")
    else:  # fast_dev_run and friends save no checkpoint: report the weights in memory
        best = model.cpu()
    tta = bool(cfg.get("tta", False))
    probs = predict_probabilities(
        best, datamodule.view_dataloaders("val") if tta else datamodule.val_dataloader()
    )
    target = datamodule.labels("val")
    uncalibrated_f1 = float(samples_f1(decide_labels(probs, best.threshold).int(), target.int()))
    flip_tta_f1 = None  # what test-time flips would give (uncalibrated), measured whenever views are cached
    if datamodule.serves_features and datamodule.cache_views > 1:
        flip_probs = probs if tta else predict_probabilities(best, datamodule.view_dataloaders("val"))
        flip_tta_f1 = float(samples_f1(decide_labels(flip_probs, best.threshold).int(), target.int()))
    mode = cfg.get("threshold_calibration", "none")
    threshold, _ = calibrate(probs, target, mode)
    crossfit_f1 = cross_fitted_f1(probs, target, mode, seed=cfg.seed) if threshold is not None else None
    if threshold is not None and best_path:
        best.hparams["threshold"] = threshold
        set_checkpoint_threshold(Path(best_path), threshold)
        log.info("calibrated %s threshold on the validation split: %s", mode, threshold)
    preds = decide_labels(probs, best.threshold).int()
    table = classification_table(preds.numpy(), target.int().numpy(), best.label_ids)
    table.to_csv(output_dir / "per_class.csv", index_label="label")
    (output_dir / "per_class.md").write_text(table.to_markdown(floatfmt=".3f") + "\n")

    best_epoch = _best_epoch(history.epochs, checkpoint.monitor)
    size_mb = inference_size_bytes(best.net) / 1e6
    averages = {
        f"val_{avg.split()[0]}_{metric}": float(table.loc[avg, metric])
        for avg in ("micro avg", "macro avg", "weighted avg", "samples avg")
        for metric in ("precision", "recall", "f1")
    }
    metrics: dict[str, Any] = {
        "val_samples_f1": averages["val_samples_f1"],
        **averages,
        "val_samples_f1_uncalibrated": uncalibrated_f1,
        "threshold_calibration": mode,
        "val_samples_f1_calibrated_crossfit": crossfit_f1,
        "tta": tta,
        "val_samples_f1_flip_tta_uncalibrated": flip_tta_f1,
        "threshold": best.hparams["threshold"],
        "val_loss": best_epoch.get("val/loss"),
        "train_loss": best_epoch.get("train/loss"),
        "best_epoch": best_epoch.get("epoch"),
        "epochs": len(history.epochs),
        "model_size_mb": round(size_mb, 3),
        "under_100mb": size_mb <= SIZE_LIMIT_MB,
        "parameters": sum(p.numel() for p in best.net.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_time_s": round(train_seconds, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "checkpoint": str(best_path),
        "history": history.epochs,
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            hparams = OmegaConf.to_container(cfg, resolve=True)
            logger.log_hyperparams(hparams, {"hp/best_val_samples_f1": metrics["val_samples_f1"]})
            logger.finalize("success")
    log.info(
        "val samples-F1 %.4f (epoch %s), model %.1f MB, %.0f s; results in %s",
        metrics["val_samples_f1"],
        metrics["best_epoch"],
        size_mb,
        metrics["wall_time_s"],
        output_dir,
    )
    return metrics


def positive_weights(datamodule: CaptionImageDataModule, cap: float = 50.0) -> list[float]:
    """negatives / positives per label on the train split (capped; labels never seen get the cap)."""
    labels = datamodule.labels("train")
    positives = labels.sum(0)
    weights = ((len(labels) - positives) / positives.clamp(min=1)).clamp(max=cap)
    return [round(float(w), 4) for w in weights]


def set_checkpoint_threshold(path: Path, threshold: float | list[float]) -> None:
    """Store a calibrated threshold in a checkpoint, atomically: a crash never leaves a half-written file."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["threshold"] = threshold
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def _best_epoch(epochs: list[dict[str, float]], monitor: str | None) -> dict[str, float]:
    scored = [e for e in epochs if monitor in e]
    if not scored:
        return {}
    return scored[int(np.argmax([e[monitor] for e in scored]))]


def run_job(cfg: DictConfig) -> float | None:
    """Hydra task: in a sweep a failing job is recorded in failed.json and the other jobs go on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = Path(cfg.paths.output_dir)
    try:
        metrics = train(cfg)
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("job in %s failed", output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        failure = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        (output_dir / FAILED_FILE).write_text(json.dumps(failure, indent=2))
        return None
    (output_dir / FAILED_FILE).unlink(missing_ok=True)
    return metrics.get("val_samples_f1")
