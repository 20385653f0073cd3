"""The study's fusion network: image embedding ++ caption embedding -> batch norm -> fully connected -> logits."""

from __future__ import annotations

import torch
from torch import nn

from mlcap.models.caption_encoder import CaptionEncoder
from mlcap.models.image_encoders import ImageEncoder


class FusionNet(nn.Module):
    """Concatenation fusion. Without a caption encoder it is the image-only model of the study's ablation.

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
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.caption_encoder = caption_encoder
        fused_dim = embed_dim * (2 if caption_encoder is not None else 1)
        self.norm = nn.BatchNorm1d(fused_dim) if batch_norm else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused_dim, num_labels))
        self.aux = None
        if aux_heads and caption_encoder is not None:
            self.aux = nn.ModuleDict(
                {
                    name: nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_labels))
                    for name in ("image", "caption")
                }
            )

    def head_logits(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits of every head ("fusion", plus "image"/"caption" with aux heads), each trained on its own."""
        if "features" in batch:
            image = self.image_encoder.forward_features(batch["features"])
        else:
            image = self.image_encoder(batch["image"])
        if self.caption_encoder is None:
            return {"fusion": self.classifier(self.norm(image))}
        caption = self.caption_encoder(batch["tokens"], batch["lengths"])
        logits = {"fusion": self.classifier(self.norm(torch.cat([image, caption], dim=1)))}
        if self.aux is not None:
            logits["image"] = self.aux["image"](image)
            logits["caption"] = self.aux["caption"](caption)
        return logits

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
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
