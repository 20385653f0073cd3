"""The classifier's part of train.py's recipe (`CLASSIFIER`, the captioner's is mlcap.captioning.task): check its
parts and encoders before any data is read, build it on the data (word vectors, loss weights, the feature
cache), then score the best checkpoint on the validation split, calibrate its threshold and write the per-class
tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mlcap.calibration import calibrate, cross_fitted_f1
from mlcap.checkpoints import set_checkpoint_threshold
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.word_vectors import train_word_vectors
from mlcap.extraction import prepare_inputs
from mlcap.inference import probabilities
from mlcap.metrics import classification_table, decide_labels, field_metrics, samples_f1
from mlcap.models.backbones import build_backbone
from mlcap.models.fusion import inference_size_bytes
from mlcap.models.lit_module import MultiLabelClassifier
from mlcap.models.parts import check_parts
from mlcap.models.presets import BUILT_IN_ENCODER
from mlcap.models.sentence_encoder import sentence_source
from mlcap.run_facts import SIZE_LIMIT_MB
from mlcap.runs import write_atomic
from mlcap.settings import model_settings
from mlcap.task import Task

log = logging.getLogger(__name__)


def check_classifier(cfg: DictConfig) -> None:
    """The classifier's parts and encoders, checked before any data is read."""
    check_parts(cfg)
    check_encoders(cfg)


def check_encoders(cfg: DictConfig) -> None:
    """Fail before any data is read when an encoder's weights are not at hand (offline hub, missing file).

    A timm backbone is built once here and dropped (its weights then sit in the hub cache for the real
    build); the sentence encoder's source is resolved without loading it. A user's own encoder class (another
    `_target_`) loads its weights itself.
    """
    encoder = cfg.model.image_encoder
    built_in = encoder.get("_target_", BUILT_IN_ENCODER) == BUILT_IN_ENCODER
    if built_in and encoder.get("weights") is not None and encoder.pretrained:
        build_backbone(encoder.name, True, encoder.weights)
    if model_settings(cfg.model).uses_sentence_encoder:
        sentence_source(cfg.model.sentence_model)


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
    # The model's frozen parts, once per row, through the cache; the data module serves their outputs.
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


def positive_weights(datamodule: CaptionImageDataModule) -> list[float]:
    """negatives / positives per label on the train split (labels never seen: as if seen once; the loss caps
    them)."""
    labels = datamodule.labels("train")
    positives = labels.sum(0)
    weights = (len(labels) - positives) / positives.clamp(min=1)
    return [round(float(w), 4) for w in weights]


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


CLASSIFIER = Task(
    check_classifier,
    build_model,
    classifier_results,
    MultiLabelClassifier,
    "val_samples_f1",
    "val samples-F1",
)
