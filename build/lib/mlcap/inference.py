"""Probabilities of a trained model over data loaders, through Lightning's predict loop on one device."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mlcap.models.lit_module import MultiLabelClassifier

_LIGHTNING_INFO = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """An evaluation trainer would repeat the fit's 'GPU available...' lines; keep those to the fit."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_INFO]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def probabilities(
    model: MultiLabelClassifier,
    loaders: DataLoader | Sequence[DataLoader],
    accelerator: str = "auto",
    precision: str | int = "32-true",
) -> torch.Tensor:
    """Probabilities for every row, in loader order; several loaders (cached flip views) are averaged.

    A fresh single-device trainer, so a DDP fit's rank zero evaluates alone and a GPU fit evaluates on the GPU.
    """
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        per_loader = []
        for loader in loaders if isinstance(loaders, Sequence) else [loaders]:
            batches = trainer.predict(model, dataloaders=loader)
            per_loader.append(torch.cat([b.float().cpu() for b in batches]))  # type: ignore[union-attr]
    return torch.stack(per_loader).mean(0)
