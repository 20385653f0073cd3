"""Predict task: a checkpoint alone + a test CSV and its images -> a Kaggle submission (ImageID,Labels)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mlcap.console import quiet_libraries
from mlcap.data.datamodule import CaptionImageDataModule, multi_hot
from mlcap.data.metadata import DataMetadata
from mlcap.data.text import Vocabulary
from mlcap.extraction import prepare_inputs
from mlcap.inference import probabilities
from mlcap.metrics import decide_labels, samples_f1
from mlcap.models.image_encoders import MissingWeightsError
from mlcap.models.lit_module import MultiLabelClassifier
from mlcap.runs import latest_finished_checkpoint, write_atomic
from mlcap.settings import SettingsError, shown, validate_predict

log = logging.getLogger(__name__)

# What predict.py reports in one line `error: ...` (settings, checkpoints, data and files: each message names
# what to change); any other exception is a bug and keeps its traceback.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, MissingWeightsError)


def resolve_checkpoint(ckpt_path: str, search_root: str | Path = "outputs") -> Path:
    """A checkpoint path, or `latest`: the newest best.ckpt of a finished run under outputs/ (single runs)."""
    if ckpt_path != "latest":
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/best.ckpt"
            )
        return path
    found = latest_finished_checkpoint(Path(search_root))
    if found is None:
        raise FileNotFoundError(
            f"no finished run (checkpoints/best.ckpt beside metrics.json) under {Path(search_root).resolve()}; "
            "train first or pass ckpt_path=..."
        )
    return found


def read_label_file(path: str | Path, label_ids: list[int]) -> pd.DataFrame:
    """An `ImageID,Labels` file (a Kaggle solution or the demo's test_labels.csv), labels as int lists."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns[:2]) != ["ImageID", "Labels"]:
        raise ValueError(f"{path}: expected header ImageID,Labels, got {','.join(table.columns)}")
    table["labels"] = [[int(x) for x in labels.split()] for labels in table["Labels"]]
    unknown = sorted({x for labels in table["labels"] for x in labels} - set(label_ids))
    if unknown:
        raise ValueError(f"{path}: unknown label ids {unknown}; the model knows {label_ids}")
    return table


def data_metadata(model: MultiLabelClassifier) -> DataMetadata:
    """What the checkpoint says about its training data (label ids, vocabulary, preprocessing)."""
    return DataMetadata.from_dict(model.hparams["data"])


def prediction_data(cfg: DictConfig, metadata: DataMetadata, tta: bool) -> CaptionImageDataModule:
    """The rows to predict, prepared as the checkpoint's training data was (its metadata), from the files this
    command names (data=..., data.root, data.csv, data.image_dir; by default the training data's folder)."""
    demo = cfg.data.get("demo") if cfg.data.root is not None else None  # data=demo: generated on first use
    return CaptionImageDataModule(
        root=cfg.data.root if cfg.data.root is not None else metadata.root,
        label_ids=metadata.label_ids,
        predict_csv=cfg.data.csv,
        image_dir=cfg.data.image_dir if cfg.data.image_dir is not None else metadata.image_dir,
        batch_size=cfg.batch_size,
        max_len=metadata.max_len,
        image_size=metadata.image_size,
        num_workers=cfg.num_workers,
        cache=cfg.cache if cfg.get("cache") is not None else True,
        cache_dir=str(Path(cfg.paths.cache_dir) / "features"),
        cache_views=metadata.cache_views if tta else 1,  # without tta the original view only
        demo=OmegaConf.to_container(demo) if demo is not None else None,
        vocab=Vocabulary(list(metadata.vocabulary)),
    )


def predict_device(accelerator: str) -> str:
    """cuda when asked (gpu, cuda) or allowed (auto) and there is a GPU, else cpu; asking for a GPU on a
    machine without one is refused rather than run on the CPU."""
    gpu = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not gpu:
        raise SettingsError(
            f"accelerator={accelerator} is not allowed: torch finds no GPU on this machine; use accelerator=auto "
            "(a GPU when there is one) or accelerator=cpu"
        )
    return "cuda" if gpu and accelerator != "cpu" else "cpu"


def check_tta(
    cfg: DictConfig, model: MultiLabelClassifier, metadata: DataMetadata, tta: bool, ckpt: Path
) -> None:
    """Test-time flips average the cached flip views: the checkpoint must have them, and this run must serve
    cached features (cache, and the checkpoint's frozen image encoder). Named in predict.py's own keys."""
    if not tta:
        return
    asked = "tta=true" if cfg.get("tta") is not None else "tta=null (the checkpoint's tta=true)"
    if metadata.cache_views < 2:
        raise SettingsError(
            f"{asked} averages the flip views, but {ckpt} was trained with data.cache_views="
            f"{metadata.cache_views}: predict with tta=false, or train with data.cache_views=4"
        )
    cache = cfg.get("cache") is None or bool(cfg.cache)
    if not (cache and model.net.image_encoder.freeze):
        raise SettingsError(
            f"{asked} averages the cached flip views, so it needs cache=true (or null) and a checkpoint whose "
            f"image encoder is frozen (got cache={shown(cfg.get('cache'))}, the checkpoint's "
            f"model.image_encoder.freeze={shown(bool(model.net.image_encoder.freeze))}): predict with tta=false"
            + (" or cache=true" if model.net.image_encoder.freeze else "")
        )


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the submission CSV (one row per input row, input order) and return where it went (+ F1 if scored)."""
    quiet_libraries()
    validate_predict(cfg)
    device = predict_device(cfg.get("accelerator", "auto"))
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    # Checked first (mlcap.checkpoints): a damaged file, or one of an older layout, is named in one line.
    model = MultiLabelClassifier.load_from_checkpoint(ckpt, load_pretrained=False, map_location=device)
    metadata = data_metadata(model)
    log.info("predicting with %s", ckpt)
    tta = model.hparams["tta"] if cfg.get("tta") is None else bool(cfg.tta)
    check_tta(cfg, model, metadata, tta, ckpt)
    datamodule = prediction_data(cfg, metadata, tta)
    datamodule.prepare_data()
    datamodule.setup("predict")
    prepare_inputs(datamodule, model.net.image_encoder, model.net.sentence_encoder)
    loaders = datamodule.view_dataloaders("predict") if tta else datamodule.predict_dataloader()
    probs = probabilities(model, loaders, accelerator=device)
    preds = decide_labels(probs, model.threshold).bool().numpy()
    label_ids = np.asarray(metadata.label_ids)
    table = datamodule.tables["predict"]
    if len(preds) != len(table):  # one row per input row, or no file at all
        raise RuntimeError(
            f"{len(preds)} predictions for {len(table)} rows of {cfg.data.csv}; nothing written"
        )
    submission = pd.DataFrame(
        {"ImageID": table["image_id"], "Labels": [" ".join(map(str, label_ids[row])) for row in preds]}
    )
    output = Path(cfg.output)
    write_atomic(output, submission.to_csv(index=False))
    log.info("wrote %d predictions to %s", len(submission), output)
    result: dict[str, Any] = {"submission": str(output), "rows": len(submission), "checkpoint": str(ckpt)}
    if cfg.get("labels_csv"):
        truth = read_label_file(cfg.labels_csv, list(metadata.label_ids)).set_index("ImageID")
        missing = sorted(set(table["image_id"]) - set(truth.index))
        if missing:
            raise ValueError(f"{cfg.labels_csv} has no labels for {len(missing)} images, e.g. {missing[:3]}")
        target = multi_hot(list(truth.loc[table["image_id"], "labels"]), metadata.label_ids)
        result["samples_f1"] = float(samples_f1(torch.from_numpy(preds).int(), target.int()))
        log.info("samples-F1 against %s: %.4f", cfg.labels_csv, result["samples_f1"])
    return result
