"""The study's fusion network: image embedding ++ caption embedding -> batch norm -> fully connected -> logits."""

from __future__ import annotations

import torch
from torch import nn

from mlcap.batch import Batch
from mlcap.models.caption_encoder import CaptionEncoder
from mlcap.models.image_encoders import ImageEncoder
from mlcap.models.sentence_encoder import SentenceEncoder


class FusionNet(nn.Module):
    """Concatenation fusion. Without a caption encoder it is the image-only model of the study's ablation.

    A `sentence_encoder` adds a projection of its caption embedding to the text side, beside the caption encoder
    or instead of it. Its frozen part runs on the data side (served as `Batch.sentences`); here run only the
    layers that fine-tune, if any, and the weights travel with (and are counted in) the model.

    With `aux_heads` an image-only and a caption-only classifier sit beside the concatenation head, each
    trained with its own loss, and the prediction averages the three heads' probabilities (late fusion).
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        caption_encoder: CaptionEncoder | None,
        num_labels: int,
        embed_dim: int,
        batch_norm: bool = True,
        dropout: float = 0.2,
        aux_heads: bool = False,
        sentence_encoder: SentenceEncoder | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.caption_encoder = caption_encoder
        self.sentence_encoder = sentence_encoder
        self.sentence_proj = None
        text_dim = embed_dim if caption_encoder is not None else 0
        if sentence_encoder is not None:
            self.sentence_proj = nn.Sequential(nn.Linear(sentence_encoder.dim, embed_dim), nn.ReLU())
            text_dim += embed_dim
        self.has_text = text_dim > 0
        fused_dim = embed_dim + text_dim
        self.norm = nn.BatchNorm1d(fused_dim) if batch_norm else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, num_labels))
        self.aux = None
        if aux_heads and self.has_text:
            self.aux = nn.ModuleDict(
                {
                    name: nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_labels))
                    for name, dim in (("image", embed_dim), ("caption", text_dim))
                }
            )

    def head_logits(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Logits of every head ("fusion", plus "image"/"caption" with aux heads), each trained on its own."""
        image, label_logits = self.image_encoder.encode(images=batch.images, features=batch.features)
        # Per-label attention logits (pooling=label_attention) are a residual on every head that sees the image.
        extra = label_logits if label_logits is not None else 0.0
        if not self.has_text:
            return {"fusion": self.classifier(self.norm(image)) + extra}
        text = []
        if self.caption_encoder is not None:
            text.append(self.caption_encoder(batch.tokens, batch.lengths))
        if self.sentence_proj is not None:
            if batch.sentences is None:
                raise ValueError("the model has a sentence encoder but the batch has no `sentences`")
            assert self.sentence_encoder is not None
            text.append(self.sentence_proj(self.sentence_encoder.encode(batch.sentences)))
        caption = torch.cat(text, dim=1)
        logits = {"fusion": self.classifier(self.norm(torch.cat([image, caption], dim=1))) + extra}
        if self.aux is not None:
            logits["image"] = self.aux["image"](image) + extra
            logits["caption"] = self.aux["caption"](caption)
        return logits

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits from a batch holding either raw `image`s or cached backbone `features`, plus `tokens`/`lengths`."""
        logits = self.head_logits(batch)
        if len(logits) == 1:
            return logits["fusion"]
        probs = torch.stack([torch.sigmoid(x) for x in logits.values()]).mean(0)
        return torch.logit(probs, eps=1e-6)


def inference_size_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer needed at inference (frozen backbone included), as the study counted."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
