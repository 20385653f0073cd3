"""LightningModule: the fusion network, its loss, optimiser and metrics. It knows nothing of files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from timm.loss import AsymmetricLossMultiLabel
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelF1Score, MultilabelPrecision, MultilabelRecall

from mlcap.batch import Batch
from mlcap.metrics import SamplesF1, decide_labels
from mlcap.models.caption_encoder import CaptionEncoder
from mlcap.models.fusion import FusionNet
from mlcap.models.sentence_encoder import SentenceEncoder


def _metric_collection(num_labels: int, prefix: str) -> MetricCollection:
    metrics: dict[str, Any] = {"samples_f1": SamplesF1()}
    for average in ("micro", "macro", "weighted"):
        kwargs = {"num_labels": num_labels, "average": average, "zero_division": 0}
        metrics[f"{average}_f1"] = MultilabelF1Score(**kwargs)
        metrics[f"{average}_precision"] = MultilabelPrecision(**kwargs)
        metrics[f"{average}_recall"] = MultilabelRecall(**kwargs)
    return MetricCollection(metrics, prefix=prefix)


def build_loss(name: str, pos_weight: Sequence[float] | None = None) -> nn.Module:
    """BCE (the study's), positive-weighted BCE, or the asymmetric loss (ASL, timm's implementation)."""
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "weighted_bce":
        if pos_weight is None:
            raise ValueError(
                "model.loss=weighted_bce needs pos_weight (train.py computes it from the train split)"
            )
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32))
    if name == "asl":
        return AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05)
    raise ValueError(f"model.loss must be bce, weighted_bce or asl, got {name!r}")


class MultiLabelClassifier(pl.LightningModule):
    """Image + caption multi-label classifier.

    Every constructor argument except `embedding_init` and `load_pretrained` is saved in the checkpoint, so a
    checkpoint alone rebuilds the model (vocabulary, label ids, threshold and preprocessing included).
    """

    def __init__(
        self,
        *,
        label_ids: Sequence[int],
        vocab_tokens: Sequence[str],
        image_encoder: DictConfig | dict[str, Any],
        caption: bool = True,
        word_vectors: str = "fasttext_sg",
        word_dim: int = 150,
        hidden_dim: int = 128,
        embed_dim: int = 256,
        rnn: str = "gru",
        attention: bool = True,
        pooling: str = "last",
        batch_norm: bool = True,
        dropout: float = 0.2,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        backbone_lr_scale: float = 1.0,
        scheduler: str = "constant",
        threshold: float | Sequence[float] = 0.5,
        loss: str = "bce",
        aux_heads: bool = False,
        sentence_encoder: str | None = None,
        sentence_trainable_layers: int = 0,
        sentence_lr_scale: float = 1.0,
        sentence_max_tokens: int = 48,
        tta: bool = False,
        pos_weight: Sequence[float] | None = None,
        preprocessing: dict[str, Any] | None = None,
        embedding_init: torch.Tensor | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(image_encoder, DictConfig):
            image_encoder = OmegaConf.to_container(image_encoder, resolve=True)  # type: ignore[assignment]
        self.save_hyperparameters(ignore=["embedding_init", "load_pretrained"], logger=False)
        self.hparams["image_encoder"] = image_encoder
        self.label_ids = list(label_ids)
        encoder_cfg = dict(image_encoder)
        encoder_cfg["pretrained"] = bool(encoder_cfg.get("pretrained", True)) and load_pretrained
        encoder_cfg["embed_dim"] = embed_dim
        if encoder_cfg.get("pooling", "avg") == "label_attention":
            encoder_cfg["num_labels"] = len(self.label_ids)
        caption_encoder = (
            CaptionEncoder(
                vocab_size=len(vocab_tokens),
                word_dim=word_dim,
                hidden_dim=hidden_dim,
                embed_dim=embed_dim,
                rnn=rnn,
                attention=attention,
                pooling=pooling,
                dropout=dropout,
                embedding_init=embedding_init,
            )
            if caption
            else None
        )
        self.net = FusionNet(
            image_encoder=hydra.utils.instantiate(encoder_cfg),
            caption_encoder=caption_encoder,
            num_labels=len(self.label_ids),
            embed_dim=embed_dim,
            batch_norm=batch_norm,
            dropout=dropout,
            aux_heads=aux_heads,
            sentence_encoder=(
                SentenceEncoder(
                    sentence_encoder,
                    trainable_layers=sentence_trainable_layers,
                    max_tokens=sentence_max_tokens,
                )
                if sentence_encoder
                else None
            ),
        )
        self.loss_fn = build_loss(loss, pos_weight)
        self.val_metrics = _metric_collection(len(self.label_ids), prefix="val/")

    @property
    def threshold(self) -> float | torch.Tensor:
        value = self.hparams["threshold"]
        return value if isinstance(value, float | int) else torch.tensor(value, device=self.device)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.net(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        heads = self.net.head_logits(batch)
        losses = {name: self.loss_fn(logits, batch.target) for name, logits in heads.items()}
        size = len(batch)
        self.log("train/loss", losses["fusion"], on_step=False, on_epoch=True, batch_size=size)
        if len(losses) > 1:
            for name in ("image", "caption"):
                self.log(
                    f"train/{name}_head_loss", losses[name], on_step=False, on_epoch=True, batch_size=size
                )
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"the training loss is {float(total.detach())} at epoch {self.current_epoch}, step {self.global_step}: "
                f"training diverged (lr={self.hparams['lr']}); lower lr or check the inputs. The run stops "
                "here, so no metrics are reported for it"
            )
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch)
        loss = self.loss_fn(logits, batch.target)
        preds = decide_labels(torch.sigmoid(logits), self.threshold).int()
        self.val_metrics.update(preds, batch.target.int())
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Probabilities; thresholding belongs to the caller, which may calibrate it."""
        return torch.sigmoid(self(batch))

    def configure_optimizers(self) -> Any:
        """Adam; pretrained image-backbone stages that train get `backbone_lr_scale` x lr, pretrained sentence
        encoder layers `sentence_lr_scale` x lr (transformers fine-tune at a far smaller rate than new heads).

        `scheduler=onecycle` warms up for 10% of the steps then anneals (cosine) to zero by `max_epochs`, which
        suits a fixed epoch budget; `constant` is the study's.
        """
        lr = self.hparams["lr"]
        scales = {
            id(p): self.hparams["backbone_lr_scale"] for p in self.net.image_encoder.backbone.parameters()
        }
        if self.net.sentence_encoder is not None:
            scales |= {
                id(p): self.hparams["sentence_lr_scale"] for p in self.net.sentence_encoder.parameters()
            }
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in scales], "lr": lr}]
        for scale in sorted(set(scales.values())):
            group = [p for p in trainable if scales.get(id(p)) == scale]
            groups.append({"params": group, "lr": lr * scale})
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=self.hparams["weight_decay"])
        name = self.hparams["scheduler"]
        if name == "constant":
            return optimizer
        if name != "onecycle":
            raise ValueError(f"model.scheduler must be constant or onecycle, got {name!r}")
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in groups],
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
