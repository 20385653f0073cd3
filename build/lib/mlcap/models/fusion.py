"""The study's fusion network: image embedding ++ caption embedding -> batch norm -> fully connected -> logits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import torch
from torch import nn

from mlcap.batch import Batch
from mlcap.models.caption_encoder import RNNCaptionEncoder
from mlcap.models.contracts import CachedTextEncoder, CaptionEncoder, ImageEncoder
from mlcap.models.sentence_encoder import SentenceEncoder
from mlcap.settings import ModelSchema


class FusionNet(nn.Module):
    """Concatenation fusion of the image embedding with the text embeddings, each `embed_dim` wide.

    The text side is the RNN caption encoder, a pretrained sentence encoder (projected to `embed_dim`), both
    (concatenated), or neither: the image-only model of the study's ablation. The sentence encoder's frozen
    part runs on the data side (served as `Batch.sentences`); here run only the layers that fine-tune, if any,
    and its weights travel with (and are counted in) the model.

    With `aux_heads` an image-only and a text-only classifier sit beside the concatenation head, each
    trained with its own loss, and the prediction averages the three heads' probabilities (late fusion).
    """

    def __init__(
        self,
        *,
        image_encoder: ImageEncoder,
        rnn_encoder: CaptionEncoder | None,
        sentence_encoder: CachedTextEncoder | None,
        num_labels: int,
        embed_dim: int,
        batch_norm: bool,
        dropout: float,
        aux_heads: bool,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.rnn_encoder = rnn_encoder
        self.sentence_encoder = sentence_encoder
        self.sentence_proj = None
        if sentence_encoder is not None:
            self.sentence_proj = nn.Sequential(nn.Linear(sentence_encoder.dim, embed_dim), nn.ReLU())
        text_dim = embed_dim * ((rnn_encoder is not None) + (sentence_encoder is not None))
        self.has_text = text_dim > 0
        fused_dim = embed_dim + text_dim
        self.norm = nn.BatchNorm1d(fused_dim) if batch_norm else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, num_labels))
        self.aux = None
        if aux_heads and self.has_text:
            self.aux = nn.ModuleDict(
                {
                    name: nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_labels))
                    for name, dim in (("image", embed_dim), ("text", text_dim))
                }
            )

    def text_embedding(self, batch: Batch) -> torch.Tensor:
        """The text encoders' embeddings of the batch's captions, concatenated [rows, text_dim]."""
        parts = []
        if self.rnn_encoder is not None:
            parts.append(self.rnn_encoder(batch.tokens, batch.lengths))
        if self.sentence_encoder is not None:
            if batch.sentences is None:
                raise ValueError("the model has a sentence encoder but the batch has no `sentences`")
            assert self.sentence_proj is not None
            parts.append(self.sentence_proj(self.sentence_encoder.encode(batch.sentences)))
        return torch.cat(parts, dim=1)

    def head_logits(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Logits of every head ("fusion", plus "image"/"text" with aux heads), each trained on its own."""
        image, label_logits = self.image_encoder.encode(images=batch.images, features=batch.features)
        # Per-label attention logits (label_attention) are a residual on every head that sees the image.
        extra = label_logits if label_logits is not None else 0.0
        if not self.has_text:
            return {"fusion": self.classifier(self.norm(image)) + extra}
        text = self.text_embedding(batch)
        logits = {"fusion": self.classifier(self.norm(torch.cat([image, text], dim=1))) + extra}
        if self.aux is not None:
            logits["image"] = self.aux["image"](image) + extra
            logits["text"] = self.aux["text"](text)
        return logits

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits from a batch holding either raw `images` or cached backbone `features`, plus its captions."""
        logits = self.head_logits(batch)
        if len(logits) == 1:
            return logits["fusion"]
        probs = torch.stack([torch.sigmoid(x) for x in logits.values()]).mean(0)
        return torch.logit(probs, eps=1e-6)


def build_fusion_net(
    settings: ModelSchema,
    image_encoder: Mapping[str, Any],
    *,
    num_labels: int,
    vocab_size: int,
    word_vectors: torch.Tensor | None,
    load_pretrained: bool,
) -> FusionNet:
    """The network the model config describes: the image encoder from its `_target_` node, the text encoders
    that `settings` asks for (none with caption=false), the fusion head. `load_pretrained=False` skips loading
    pretrained image weights (a checkpoint's tensors replace them)."""
    s = settings
    rnn = None  # built first, then the image encoder: a seed gives the same weights as in earlier versions
    if s.uses_rnn:
        rnn = RNNCaptionEncoder(
            vocab_size=vocab_size, word_dim=s.word_dim, hidden_dim=s.hidden_dim, embed_dim=s.embed_dim,
            rnn=s.rnn, attention=s.attention, pooling=s.rnn_pooling, dropout=s.dropout, word_vectors=word_vectors,
        )  # fmt: skip
    image = hydra.utils.instantiate(
        image_encoder,
        pretrained=bool(image_encoder["pretrained"]) and load_pretrained,
        embed_dim=s.embed_dim,
        num_labels=num_labels,
    )
    sentence = None
    if s.uses_sentence_encoder:
        sentence = SentenceEncoder(
            s.sentence_model, trainable_layers=s.sentence_trainable_layers, max_tokens=s.sentence_max_tokens
        )
    return FusionNet(
        image_encoder=image, rnn_encoder=rnn, sentence_encoder=sentence, num_labels=num_labels,
        embed_dim=s.embed_dim, batch_norm=s.batch_norm, dropout=s.dropout, aux_heads=s.aux_heads,
    )  # fmt: skip


def inference_size_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer needed at inference (frozen backbone included), as the study counted."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
