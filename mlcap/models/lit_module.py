"""LightningModule: the fusion network, its loss, optimiser and metrics. It knows nothing of files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelF1Score, MultilabelPrecision, MultilabelRecall

from mlcap.batch import Batch
from mlcap.checkpoints import LAYOUT, LAYOUT_KEY, check_checkpoint
from mlcap.data.metadata import DataMetadata
from mlcap.data.text import PAD_ID, UNK_ID
from mlcap.errors import DivergedError
from mlcap.metrics import FieldMetrics, SamplesF1, decide_labels
from mlcap.models.fusion import build_fusion_net
from mlcap.models.parts import build_loss, build_optimizer, build_scheduler
from mlcap.settings import model_settings


def _metric_collection(num_labels: int, prefix: str) -> MetricCollection:
    metrics: dict[str, Any] = {"samples_f1": SamplesF1()}
    for average in ("micro", "macro", "weighted"):
        kwargs = {"num_labels": num_labels, "average": average, "zero_division": 0}
        metrics[f"{average}_f1"] = MultilabelF1Score(**kwargs)
        metrics[f"{average}_precision"] = MultilabelPrecision(**kwargs)
        metrics[f"{average}_recall"] = MultilabelRecall(**kwargs)
    return MetricCollection(metrics, prefix=prefix)


class MultiLabelClassifier(pl.LightningModule):
    """Image + caption multi-label classifier, built from the model config (conf/model, resolved).

    `model`: cfg.model as a plain dict: its own knobs (read through `mlcap.settings.model_settings`) and the
    `_target_` nodes of its parts (image_encoder, loss; optimizer and scheduler, `_partial_`). `data`: the
    training data's `DataMetadata.to_dict()` (label ids, vocabulary, preprocessing). `threshold` and `tta` are
    the top-level keys of the same names. These four are the checkpoint's hyper-parameters, plain containers,
    so a checkpoint alone rebuilds the model; `embedding_init` (the initial word vectors) and
    `load_pretrained` (False: skip loading pretrained weights that the checkpoint's tensors replace) are not.
    """

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        data: Mapping[str, Any],
        threshold: float | Sequence[float],
        tta: bool,
        embedding_init: torch.Tensor | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["embedding_init", "load_pretrained"], logger=False)
        self.settings = model_settings(model)
        self.metadata = DataMetadata.from_dict(data)
        self.net = build_fusion_net(
            self.settings,
            model["image_encoder"],
            num_labels=len(self.label_names),
            vocab_size=len(self.metadata.vocabulary),
            word_vectors=embedding_init,
            load_pretrained=load_pretrained,
        )
        self.loss_fn = build_loss(model["loss"])
        self.val_metrics = _metric_collection(len(self.label_names), prefix="val/")
        self.val_field = FieldMetrics(len(self.label_names))  # mAP, CP ... OF1: logged as val/mAP, ...

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any
    ) -> MultiLabelClassifier:
        """Lightning's, after `mlcap.checkpoints.check_checkpoint`: a damaged file, or one of another mlcap
        version's layout, is named with what to do instead of failing inside Lightning."""
        check_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=True, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LAYOUT_KEY] = LAYOUT

    @property
    def label_names(self) -> list[str]:
        return list(self.metadata.label_names)

    @property
    def threshold(self) -> float | torch.Tensor:
        value = self.hparams["threshold"]
        return value if isinstance(value, float | int) else torch.tensor(value, device=self.device)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.net(batch)

    def drop_captions(self, batch: Batch) -> Batch:
        """In training, each row's caption replaced by the empty one (a single unknown word, as an empty
        caption is served) with probability model.caption_dropout; the batch as is otherwise."""
        share = self.settings.caption_dropout
        if not (self.training and share > 0 and self.settings.uses_rnn):
            return batch
        drop = torch.rand(len(batch), device=batch.tokens.device) < share
        tokens = batch.tokens.clone()
        tokens[drop] = PAD_ID
        tokens[drop, 0] = UNK_ID
        lengths = torch.where(drop, torch.ones_like(batch.lengths), batch.lengths)
        return dataclasses.replace(batch, tokens=tokens, lengths=lengths)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch = self.drop_captions(batch)
        heads = self.net.head_logits(batch)
        losses = {name: self.loss_fn(logits, batch.target) for name, logits in heads.items()}
        size = len(batch)
        self.log("train/loss", losses["fusion"], on_step=False, on_epoch=True, batch_size=size)
        for name in ("image", "text"):
            if name in losses:
                self.log(
                    f"train/{name}_head_loss", losses[name], on_step=False, on_epoch=True, batch_size=size
                )
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise DivergedError(
                f"the training loss is {float(total.detach())} at epoch {self.current_epoch}, step {self.global_step}: "
                f"training diverged (lr={self.base_lr}); lower lr or check the inputs. The run stops "
                "here, so no metrics are reported for it"
            )
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch)
        loss = self.loss_fn(logits, batch.target)
        # Several captions of an image come as items of their own: their probabilities are averaged per image.
        probs, target = batch.per_row(torch.sigmoid(logits)), batch.per_row(batch.target).int()
        preds = decide_labels(probs, self.threshold).int()
        self.val_metrics.update(preds, target)
        self.val_field.update(probs, preds, target)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.log_dict({f"val/{name}": value for name, value in self.val_field.compute().items()})
        self.val_metrics.reset()
        self.val_field.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Probabilities; thresholding belongs to the caller, which may calibrate it."""
        return batch.per_row(torch.sigmoid(self(batch)))

    @property
    def base_lr(self) -> float:
        """The base learning rate (the top-level `lr`, which the optimizer node interpolates)."""
        return float(self.hparams["model"]["optimizer"]["lr"])

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters by learning rate: lr for the new layers, lr x backbone_lr_scale for
        pretrained image-backbone stages that train, lr x sentence_lr_scale for pretrained sentence-encoder
        layers (transformers fine-tune at a far smaller rate than new heads)."""
        scales = {
            id(p): self.settings.backbone_lr_scale for p in self.net.image_encoder.backbone.parameters()
        }
        if self.net.sentence_encoder is not None:
            scales |= {id(p): self.settings.sentence_lr_scale for p in self.net.sentence_encoder.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in scales], "lr": self.base_lr}]
        for scale in sorted(set(scales.values())):
            group = [p for p in trainable if scales.get(id(p)) == scale]
            groups.append({"params": group, "lr": self.base_lr * scale})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> Any:
        """model.optimizer over the parameter groups; model.scheduler, if any, over the run's optimizer steps
        (mlcap.models.parts builds both, as its dry run before the data does)."""
        optimizer = build_optimizer(self.hparams["model"]["optimizer"], self.parameter_groups())
        scheduler = self.hparams["model"]["scheduler"]
        if scheduler is None:
            return optimizer
        schedule = build_scheduler(scheduler, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
