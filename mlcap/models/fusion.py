"""The study's fusion network: image embedding ++ caption embedding -> batch norm -> fully connected -> logits."""

from __future__ import annotations

import torch
from torch import nn

from mlcap.models.caption_encoder import CaptionEncoder
from mlcap.models.image_encoders import ImageEncoder


class FusionNet(nn.Module):
    """Concatenation fusion. Without a caption encoder it is the image-only model of the study's ablation."""

    def __init__(
        self,
        image_encoder: ImageEncoder,
        caption_encoder: CaptionEncoder | None,
        num_labels: int,
        embed_dim: int,
        batch_norm: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.caption_encoder = caption_encoder
        fused_dim = embed_dim * (2 if caption_encoder is not None else 1)
        self.norm = nn.BatchNorm1d(fused_dim) if batch_norm else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, num_labels))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from a batch holding either raw `image`s or cached backbone `features`, plus `tokens`/`lengths`."""
        if "features" in batch:
            parts = [self.image_encoder.forward_features(batch["features"])]
        else:
            parts = [self.image_encoder(batch["image"])]
        if self.caption_encoder is not None:
            parts.append(self.caption_encoder(batch["tokens"], batch["lengths"]))
        return self.classifier(self.norm(torch.cat(parts, dim=1)))


def inference_size_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer needed at inference (frozen backbone included), as the study counted."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
