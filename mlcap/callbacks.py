"""The Lightning callbacks the training recipe relies on: the epoch history metrics.json reports, and the
configured ModelCheckpoint whose monitor picks the best epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint


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

    def best_epoch(self, monitor: str | None) -> int | None:
        """The epoch with the highest `monitor` (for a run that saved no checkpoint), or None if none logged it."""
        scored = [e for e in self.epochs if monitor in e]
        return int(scored[int(np.argmax([e[monitor] for e in scored]))]["epoch"]) if scored else None


def monitored_checkpoint(callbacks: Sequence[Callback]) -> ModelCheckpoint:
    """The ModelCheckpoint with a monitor (callbacks.model_checkpoint): its best file is the run's result."""
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor:
            return callback
    raise ValueError(
        "the callbacks config needs a ModelCheckpoint with a monitor (callbacks.model_checkpoint)"
    )
