"""The captioner's part of train.py's recipe: build it on the data (through the feature cache), then score the
best checkpoint's validation captions beside two baselines and write them to metrics.json, TensorBoard and
captions.md."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from mlcap.captioning.metrics import caption_scores
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.datasets import whole_batch
from mlcap.extraction import prepare_inputs
from mlcap.models.captioner import Captioner
from mlcap.runs import write_atomic
from mlcap.task import Task

log = logging.getLogger(__name__)

SCORE = "val_CIDEr-D"  # what a sweep optimises and the log shows (the monitor is the config's `monitor`)
EXAMPLES = 8  # validation images shown in captions.md


def build_captioner(cfg: DictConfig, datamodule: CaptionImageDataModule) -> Captioner:
    """The captioner from cfg.model with the data's metadata; its frozen image encoder runs through the cache."""
    model = Captioner(
        model=OmegaConf.to_container(cfg.model, resolve=True),  # type: ignore[arg-type]
        data=datamodule.metadata().to_dict(),
    )
    datamodule.use_inputs(prepare_inputs(datamodule, model.image_encoder))
    return model


def generate(model: Captioner, datamodule: CaptionImageDataModule, split: str) -> list[list[str]]:
    """One caption (tokens) per row of a split, by the model's `beam_size` decoding, on the CPU."""
    model.eval()
    captions: list[list[str]] = []
    for batch in _loader(datamodule, split):
        captions += model.captions(batch)
    return captions


def _loader(datamodule: CaptionImageDataModule, split: str) -> DataLoader:
    """A split's rows in order, one image per row (several captions: the row's first)."""
    eval_captions = datamodule.eval_captions
    datamodule.eval_captions = "first"
    try:
        dataset = datamodule.dataset(split, train=False)
    finally:
        datamodule.eval_captions = eval_captions
    return DataLoader(dataset, batch_size=datamodule.batch_size, collate_fn=whole_batch)


@torch.no_grad()
def image_vectors(model: Captioner, datamodule: CaptionImageDataModule, split: str) -> torch.Tensor:
    """The frozen backbone's pooled output per row [rows, dim] (the cached features, a map averaged over its
    positions; without a cache the backbone runs on the images)."""
    vectors = []
    for batch in _loader(datamodule, split):
        if batch.features is not None:
            features = batch.features.float()
        else:
            features = model.image_encoder.cached_forward(batch.images).float()
        vectors.append(features.mean(dim=(2, 3)) if features.ndim == 4 else features)
    return torch.cat(vectors)


def nearest_neighbour_captions(
    train: torch.Tensor, val: torch.Tensor, train_tokens: Sequence[Sequence[Sequence[str]]]
) -> list[list[str]]:
    """For each validation image, the first caption of the training image closest by cosine similarity."""
    similarity = torch.nn.functional.normalize(val, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    nearest = similarity.argmax(dim=1).tolist()
    return [list(train_tokens[i][0]) if train_tokens[i] else [] for i in nearest]


def most_frequent_caption(train_tokens: Sequence[Sequence[Sequence[str]]]) -> list[str]:
    """The most frequent preprocessed training caption (ties: the first met)."""
    counts = Counter(" ".join(caption) for row in train_tokens for caption in row)
    return counts.most_common(1)[0][0].split() if counts else []


def caption_results(
    trainer: pl.Trainer,
    best: Captioner,
    best_path: str,
    datamodule: CaptionImageDataModule,
    cfg: DictConfig,
    output_dir: Path,
) -> dict[str, Any]:
    """The best checkpoint's validation caption metrics beside the nearest-neighbour and most-frequent
    baselines (metrics.json keys val_BLEU-1 ... val_CIDEr-D and `baselines`), also in TensorBoard, and the
    example table captions.md."""
    references = [list(map(list, row)) for row in datamodule.tables["val"]["tokens"]]
    train_tokens = [list(map(list, row)) for row in datamodule.tables["train"]["tokens"]]
    generated = generate(best, datamodule, "val")
    neighbours = nearest_neighbour_captions(
        image_vectors(best, datamodule, "train"), image_vectors(best, datamodule, "val"), train_tokens
    )
    frequent = most_frequent_caption(train_tokens)
    model_scores = caption_scores(generated, references)
    baselines = {
        "nearest_neighbour": caption_scores(neighbours, references),
        "most_frequent": {
            **caption_scores([frequent] * len(references), references),
            "caption": " ".join(frequent),
        },
    }
    beats = model_scores["CIDEr-D"] > baselines["nearest_neighbour"]["CIDEr-D"]
    verdict = _verdict(model_scores, baselines, beats)
    (log.info if beats else log.warning)(verdict)
    _log_scalars(trainer, model_scores, baselines)
    write_atomic(
        output_dir / "captions.md", examples_markdown(datamodule, generated, neighbours, output_dir, verdict)
    )
    return {
        **{f"val_{name}": value for name, value in model_scores.items()},
        "beam_size": best.beam_size,
        "baselines": baselines,
        "beats_nearest_neighbour": beats,
        "caption_verdict": verdict,
    }


def _verdict(model: Mapping[str, float], baselines: Mapping[str, Mapping[str, Any]], beats: bool) -> str:
    nn_scores, frequent = baselines["nearest_neighbour"], baselines["most_frequent"]
    figures = (
        f"CIDEr-D {model['CIDEr-D']:.3f} / BLEU-4 {model['BLEU-4']:.3f}; nearest-neighbour caption "
        f"{nn_scores['CIDEr-D']:.3f} / {nn_scores['BLEU-4']:.3f}; most frequent caption "
        f"{frequent['CIDEr-D']:.3f} / {frequent['BLEU-4']:.3f}"
    )
    if beats:
        return f"the captioner beats the nearest-neighbour baseline on CIDEr-D: {figures}"
    return f"the captioner does NOT beat the nearest-neighbour baseline on CIDEr-D: {figures}"


def _log_scalars(
    trainer: pl.Trainer, model: Mapping[str, float], baselines: Mapping[str, Mapping[str, Any]]
) -> None:
    """The best model's and the baselines' scores as scalars (captions/<who>/<metric>) in every logger."""
    values = {f"captions/model/{k}": v for k, v in model.items()}
    for who, scores in baselines.items():
        values |= {f"captions/{who}/{k}": v for k, v in scores.items() if isinstance(v, float)}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)


def examples_markdown(
    datamodule: CaptionImageDataModule,
    generated: Sequence[Sequence[str]],
    neighbours: Sequence[Sequence[str]],
    output_dir: Path,
    verdict: str,
) -> str:
    """A table of the first validation images (PNG thumbnails in captions/), their real captions, the
    generated one and the nearest neighbour's."""
    folder = output_dir / "captions"
    folder.mkdir(parents=True, exist_ok=True)
    table: pd.DataFrame = datamodule.tables["val"]
    lines = [
        "# Validation captions",
        "",
        f"Tokens are mlcap's preprocessed words (no stop words, lemmas). {verdict}.",
        "",
        "| image | real caption(s) | generated | nearest neighbour |",
        "|---|---|---|---|",
    ]
    for i in range(min(EXAMPLES, len(table))):
        path = Path(table["path"][i])
        thumb = folder / f"{i:02d}-{path.stem}.png"
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((128, 128))
            image.save(thumb)
        real = "<br>".join(_cell(c) for c in table["captions"][i])
        lines.append(
            f"| ![{path.name}](captions/{thumb.name}) | {real} | {_cell(' '.join(generated[i]))} | "
            f"{_cell(' '.join(neighbours[i]))} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"


CAPTIONER = Task(lambda _cfg: None, build_captioner, caption_results, Captioner, SCORE, "val CIDEr-D")
