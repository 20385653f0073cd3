"""predict.py's `captions=given|generated|fill`: captions from a captioner checkpoint for the rows to predict,
so a user with images only (or some empty captions) still gets the classifier's caption branch."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from mlcap.captioning import is_captioner
from mlcap.captioning.task import generate
from mlcap.checkpoints import load_checkpoint
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.metadata import DataMetadata
from mlcap.extraction import prepare_inputs
from mlcap.models.captioner import Captioner
from mlcap.runs import write_atomic
from mlcap.settings import SettingsError

log = logging.getLogger(__name__)
CAPTION_MODES = ("given", "generated", "fill")


def check_captions_keys(cfg: DictConfig) -> None:
    """`captions` is given, generated or fill; the last two need `captioner_ckpt`, an existing file."""
    mode, ckpt = cfg.get("captions", "given"), cfg.get("captioner_ckpt")
    if mode not in CAPTION_MODES:
        raise SettingsError(f"captions={mode!r} is not allowed: it must be one of {', '.join(CAPTION_MODES)}")
    if mode != "given" and (ckpt is None or not Path(ckpt).expanduser().is_file()):
        raise SettingsError(
            f"captions={mode} needs captioner_ckpt=<run>/checkpoints/best.ckpt of a `python train.py "
            f"model=captioner` run (got captioner_ckpt={ckpt!r}, {'no such file' if ckpt else 'unset'})"
        )


def refuse_captioner_as_classifier(ckpt: Path) -> None:
    """predict.py's ckpt_path is the classifier: a captioner's checkpoint there is named with what to do."""
    model = load_checkpoint(ckpt).get("hyper_parameters", {}).get("model", {})
    if is_captioner(model):
        raise SettingsError(
            f"ckpt_path={ckpt} is a captioner (model=captioner), and predict.py predicts labels with a classifier: "
            f"pass the classifier's checkpoint as ckpt_path and this one as captioner_ckpt={ckpt} captions=generated"
        )


def replace_captions(
    cfg: DictConfig, datamodule: CaptionImageDataModule, metadata: DataMetadata, data_for: Any
) -> pd.DataFrame | None:
    """With captions=generated every row's caption, with fill those of rows whose captions are all empty, by
    the captioner (`data_for(cfg, metadata, tta)`: predict.py's data module for a checkpoint's metadata; the
    rows are the classifier's: its `metadata`'s data node, unless `data=...` names one).
    Changes the set-up data module's predict table in place, before the classifier's inputs are prepared;
    returns the captions used (ImageID, Caption, source) or None with captions=given."""
    mode = cfg.get("captions", "given")
    if mode == "given":
        return None
    captioner = Captioner.load_from_checkpoint(cfg.captioner_ckpt, load_pretrained=False, map_location="cpu")
    own = DataMetadata.from_dict(captioner.hparams["data"])
    images = data_for(cfg, dataclasses.replace(own, data=metadata.data), False)
    images.setup("predict")
    table = datamodule.tables["predict"]
    if list(images.tables["predict"]["image_id"]) != list(table["image_id"]):
        raise RuntimeError("the captioner's rows are not the classifier's; nothing predicted")
    images.use_inputs(prepare_inputs(images, captioner.image_encoder))
    generated = generate(captioner, images, "predict")
    empty = [all(not tokens for tokens in row) for row in table["tokens"]]
    chosen = [True] * len(table) if mode == "generated" else empty
    table["captions"] = [
        [" ".join(g)] if pick else c for g, c, pick in zip(generated, table["captions"], chosen, strict=True)
    ]
    table["tokens"] = [
        [list(g)] if pick else t for g, t, pick in zip(generated, table["tokens"], chosen, strict=True)
    ]
    log.info("captions=%s: %d of %d rows captioned by %s", mode, sum(chosen), len(table), cfg.captioner_ckpt)
    return pd.DataFrame(
        {
            "ImageID": table["image_id"],
            "Caption": [" / ".join(c) for c in table["captions"]],
            "source": ["generated" if pick else "given" for pick in chosen],
        }
    )


def write_captions(used: pd.DataFrame, output: Path) -> Path:
    """The captions a prediction used, beside the submission (<output stem>_captions.csv)."""
    path = output.with_name(f"{output.stem}_captions.csv")
    write_atomic(path, used.to_csv(index=False))
    return path
