"""Predict task: a checkpoint alone + the rows to predict and their images -> a submission (ImageID,Labels),
the labels written as the data names them (COMP5329: its numeric ids)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mlcap.captioning.fill import (
    check_captions_keys,
    refuse_captioner_as_classifier,
    replace_captions,
    write_captions,
)
from mlcap.console import quiet_libraries
from mlcap.data.comp5329 import check_regular_file
from mlcap.data.datamodule import CaptionImageDataModule, build_datamodule, multi_hot, portable_config
from mlcap.data.metadata import DataMetadata
from mlcap.data.text import Vocabulary
from mlcap.extraction import prepare_inputs
from mlcap.inference import probabilities
from mlcap.metrics import decide_labels, field_metrics, samples_f1
from mlcap.models.lit_module import MultiLabelClassifier
from mlcap.runs import latest_finished_checkpoint, write_atomic
from mlcap.settings import SettingsError, shown, validate_predict

log = logging.getLogger(__name__)


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


def label_separator(metadata: DataMetadata) -> str:
    """What joins two labels in a submission: the data's `label_sep` (a space where it has none); a label name
    holding it could not be read back, so that is refused."""
    sep = str(metadata.data.get("label_sep") or " ")
    clash = [name for name in metadata.label_names if sep in name]
    if clash:
        raise ValueError(
            f"label names {clash[:3]} hold data.label_sep={sep!r}, so a submission could not be read back; "
            "train with another data.label_sep"
        )
    return sep


def read_label_file(path: str | Path, label_names: list[str], sep: str = " ") -> pd.DataFrame:
    """An `ImageID,Labels` file (a Kaggle solution or the demo's test_labels.csv), labels as lists of names;
    a duplicate image or a label the model does not know is named with its file line."""
    path = check_regular_file(Path(path).expanduser(), "labels_csv")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        message = " ".join(str(err).split())
        raise ValueError(f"labels_csv={path} cannot be read as CSV ({message}); fix the file") from None
    if list(table.columns[:2]) != ["ImageID", "Labels"]:
        raise ValueError(f"{path}: expected header ImageID,Labels, got {','.join(table.columns)}")
    table["line"] = table.index + 2  # the header is line 1; blank lines are counted, then dropped
    table = table[(table["ImageID"] != "") | (table["Labels"] != "")]
    repeated = table[table["ImageID"].duplicated(keep=False)]
    if len(repeated):
        image_id = repeated["ImageID"].iloc[0]
        lines = ", ".join(map(str, repeated.loc[repeated["ImageID"] == image_id, "line"]))
        raise ValueError(
            f"labels_csv={path}: image {image_id} has more than one row (lines {lines}; "
            f"{repeated['ImageID'].nunique()} image(s) repeated in all); keep one row per image"
        )
    table["labels"] = [labels.split() if sep == " " else labels.split(sep) for labels in table["Labels"]]
    known = set(label_names)
    for line, image_id, labels in zip(table["line"], table["ImageID"], table["labels"], strict=True):
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ValueError(
                f"labels_csv={path}, line {line} ({image_id}): label(s) {unknown} are not labels of this model, "
                f"which knows {label_names}; fix that row, or pass the labels file of the data this model "
                "was trained on"
            )
    return table


def data_metadata(model: MultiLabelClassifier) -> DataMetadata:
    """What the checkpoint says about its training data (label names, vocabulary, preprocessing, data node)."""
    return DataMetadata.from_dict(model.hparams["data"])


def prediction_data(cfg: DictConfig, metadata: DataMetadata, tta: bool) -> CaptionImageDataModule:
    """The rows to predict, prepared as the checkpoint's training data was (its metadata), through the same
    reader node as training: the checkpoint's own data node, or the one `data=<format>` names (with its keys);
    data.root and data.image_dir default to the checkpoint's."""
    chosen = "reader" in cfg.data
    node = portable_config(cfg.data) if chosen else dict(metadata.data)
    for key in ("root", "image_dir"):
        value = node.get(key) if chosen else cfg.data.get(key)
        if key in cfg.data and not OmegaConf.is_missing(cfg.data, key) and cfg.data[key] is not None:
            value = cfg.data[key]
        node[key] = metadata.data.get(key) if value in (None, "???") else value
    return build_datamodule(
        node,
        vocab=Vocabulary(list(metadata.vocabulary)),
        label_names=list(metadata.label_names),
        max_len=metadata.max_len,
        image_size=list(metadata.image_size) if metadata.image_size is not None else None,
        eval_captions=metadata.eval_captions,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        cache=cfg.cache if cfg.get("cache") is not None else True,
        cache_dir=str(Path(cfg.paths.cache_dir) / "features"),
        cache_views=metadata.cache_views if tta else 1,  # without tta the original view only
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


def check_output(output: Path, ckpt: Path, labels_csv: str | None, data_root: str | Path | None) -> None:
    """Before any work: the submission must not replace an input (the checkpoint, the labels file, a file of
    the data set) and its folder must be writable, so a typo never costs the data or the prediction."""
    target = output.expanduser().resolve()
    inputs = [("ckpt_path", ckpt), ("labels_csv", labels_csv)]
    for key, path in inputs:
        if path is not None and Path(path).expanduser().resolve() == target:
            raise ValueError(
                f"output={output} is {key}={path}: an output never replaces an input; choose another output"
            )
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if target.exists() and target.is_relative_to(root):
            raise ValueError(
                f"output={output} would replace {target}, a file of the data under data.root={root}; an output "
                "never replaces an input: choose another output"
            )
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"output={output}: the folder {folder} is not writable; choose another output")


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the submission CSV (one row per input row, input order) and return where it went (+ F1 if scored)."""
    quiet_libraries()
    validate_predict(cfg)
    check_captions_keys(cfg)
    device = predict_device(cfg.get("accelerator", "auto"))
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    refuse_captioner_as_classifier(ckpt)
    # Checked first (mlcap.checkpoints): a damaged file, or one of an older layout, is named in one line.
    model = MultiLabelClassifier.load_from_checkpoint(ckpt, load_pretrained=False, map_location=device)
    metadata = data_metadata(model)
    log.info("predicting with %s", ckpt)
    tta = model.hparams["tta"] if cfg.get("tta") is None else bool(cfg.tta)
    check_tta(cfg, model, metadata, tta, ckpt)
    datamodule = prediction_data(cfg, metadata, tta)
    check_output(Path(cfg.output), ckpt, cfg.get("labels_csv"), getattr(datamodule.reader, "root", None))
    sep = label_separator(metadata)
    # Read before predicting: a bad labels file is named before the work, not after it.
    truth = (
        read_label_file(cfg.labels_csv, list(metadata.label_names), sep) if cfg.get("labels_csv") else None
    )
    datamodule.prepare_data()
    datamodule.setup("predict")
    used_captions = replace_captions(cfg, datamodule, metadata, prediction_data)  # captions=generated|fill
    datamodule.use_inputs(prepare_inputs(datamodule, model.net.image_encoder, model.net.sentence_encoder))
    loaders = datamodule.view_dataloaders("predict") if tta else datamodule.predict_dataloader()
    probs = probabilities(model, loaders, accelerator=device)
    preds = decide_labels(probs, model.threshold).bool().numpy()
    names = np.asarray(metadata.label_names, dtype=object)
    table = datamodule.tables["predict"]
    if len(preds) != len(table):  # one row per input row, or no file at all
        raise RuntimeError(
            f"{len(preds)} predictions for {len(table)} rows of {datamodule.reader.describe('predict')}; "
            "nothing written"
        )
    submission = pd.DataFrame(
        {"ImageID": table["image_id"], "Labels": [sep.join(names[row]) for row in preds]}
    )
    output = Path(cfg.output)
    write_atomic(output, submission.to_csv(index=False))
    log.info("wrote %d predictions to %s", len(submission), output)
    result: dict[str, Any] = {"submission": str(output), "rows": len(submission), "checkpoint": str(ckpt)}
    if used_captions is not None:
        result["captions"] = str(write_captions(used_captions, output))
    target = None
    if truth is not None:
        truth = truth.set_index("ImageID")
        missing = sorted(set(table["image_id"]) - set(truth.index))
        if missing:
            raise ValueError(
                f"labels_csv={cfg.labels_csv} has no labels for {len(missing)} images, e.g. {missing[:3]}; "
                "pass the labels file of the rows predicted (the submission is written)"
            )
        target = multi_hot(list(truth.loc[table["image_id"], "labels"]), metadata.label_names)
    elif "labels" in table:  # a prediction file with labels (or COCO's predict_instances): score it
        target = datamodule.labels("predict")
    if target is not None:
        chosen = torch.from_numpy(preds).int()
        result["samples_f1"] = float(samples_f1(chosen, target.int()))
        result |= field_metrics(probs, chosen, target.int())
        log.info(
            "scored: samples-F1 %.4f, mAP %.4f, CF1 %.4f, OF1 %.4f",
            *(result[k] for k in ("samples_f1", "mAP", "CF1", "OF1")),
        )
    return result
