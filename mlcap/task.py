"""The contract between the training recipe (mlcap.train) and a model the model group offers: the classifier
(mlcap.classifier_task.CLASSIFIER) or the captioner (mlcap.captioning.task.CAPTIONER); the recipe picks one
(mlcap.train.task_for). Torch-free; each task module imports this one, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from mlcap.data.datamodule import CaptionImageDataModule


@dataclass(frozen=True)
class Task:
    """What differs between the models the model group offers (the classifier, model=captioner) in the
    recipe: checks before the data is read, how the model is built, what the best checkpoint is scored by and
    written as, and the metrics.json key a sweep optimises. The rest of the recipe is shared.

    `results(trainer, best, best_path, datamodule, cfg, output_dir)` scores the best checkpoint's model and
    writes the task's files; it returns the task's metrics.json entries (`score` among them).
    """

    check: Callable[[DictConfig], None]
    build_model: Callable[[DictConfig, CaptionImageDataModule], pl.LightningModule]
    results: Callable[..., dict[str, Any]]
    model_class: type[pl.LightningModule]
    score: str
    title: str  # the score as the log names it
