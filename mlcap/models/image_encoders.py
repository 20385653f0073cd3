"""Image encoders: a pretrained backbone (optionally frozen) plus a projection to the fusion embedding size.

`ImageEncoder` is the built-in encoder class (conf/model/image_encoder/base.yaml's `_target_`), over the
backbones of mlcap.models.backbones; any class with the members of mlcap.models.contracts.ImageEncoder
can take its place.
"""

from __future__ import annotations

import torch
from torch import nn

from mlcap.models.backbones import (
    Backbone,
    MissingWeightsError,
    SmallCNN,
    WeightsFileError,
    backbone_stages,
    build_backbone,
    check_timm_name,
    state_fingerprint,
    timm_backbone,
)
from mlcap.models.presets import PRESETS

# Names importers take from here since before the backbones had a module of their own.
__all__ = [
    "PRESETS",
    "Backbone",
    "ImageEncoder",
    "LabelAttentionPooling",
    "MissingWeightsError",
    "SmallCNN",
    "WeightsFileError",
    "backbone_stages",
    "build_backbone",
    "check_timm_name",
    "state_fingerprint",
    "timm_backbone",
]


class LabelAttentionPooling(nn.Module):
    """Per-label spatial attention: each label scores every position and pools its own evidence.

    A one-head form of ML-Decoder's label queries (class-specific attention as in CSRA): small objects that a
    global average washes out keep their own weight. Returns logits [batch, labels]. Written by hand because
    neither timm nor torchvision ships a label-query pooling head.
    """

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.query = nn.Linear(dim, num_labels)
        self.value = nn.Linear(dim, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.query(tokens).softmax(dim=1)  # [batch, positions, labels]
        return (weights * self.value(self.dropout(tokens))).sum(dim=1)


class ImageEncoder(nn.Module):
    """Backbone (a built-in preset, or any timm model with `weights`) -> pooled features -> projection to the
    fusion embedding size.

    With `freeze=True` the backbone's bottom never trains and stays in eval mode (batch-norm statistics
    included), which is what lets the data side cache its output: `cached_forward` computes what is cached,
    `embed_cached` the embedding from it. `trainable_blocks` > 0 trains the top stages (from their pretrained
    weights) on the cached spatial map of the stage below; `label_attention` keeps the map and adds per-label
    attention logits beside the global average (`encode`'s second output). The arguments are the keys of
    conf/model/image_encoder (their defaults live there), plus `embed_dim` and `num_labels` from the model.
    """

    def __init__(
        self,
        *,
        name: str,
        weights: str | None,
        pretrained: bool,
        freeze: bool,
        dropout: float,
        trainable_blocks: int,
        label_attention: bool,
        embed_dim: int,
        num_labels: int,
    ) -> None:
        super().__init__()
        backbone = build_backbone(name, pretrained, weights)
        self.name = name
        self.preset = weights is None  # a built-in encoder; else a timm model
        self.freeze = freeze
        self.backbone = backbone.module
        self.feature_dim = backbone.feature_dim
        self.mean, self.std = backbone.mean, backbone.std
        self.weights_id = backbone.weights_id
        self.input_size, self.interpolation = backbone.input_size, backbone.interpolation
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, embed_dim), nn.ReLU())
        self.label_pool = (
            LabelAttentionPooling(self.feature_dim, num_labels, dropout) if label_attention else None
        )
        self._split(trainable_blocks)

    def _split(self, trainable_blocks: int) -> None:
        """Cut the backbone into a frozen, cached bottom and `trainable_blocks` top stages that train."""
        needs_map = trainable_blocks or self.label_pool is not None
        stages = backbone_stages(self.name, self.backbone, self.preset) if needs_map else []
        if trainable_blocks and not self.freeze:
            raise ValueError(
                "image_encoder.trainable_blocks needs freeze=true (without it everything trains)"
            )
        if not 0 <= trainable_blocks < max(len(stages), 1):
            raise ValueError(
                f"image_encoder.trainable_blocks must be in [0, {len(stages) - 1}] for {self.name}, "
                f"got {trainable_blocks}"
            )
        self.trainable_blocks = trainable_blocks
        cut = len(stages) - trainable_blocks
        # Plain lists, not submodules: the stages already live (and are saved) inside `self.backbone`.
        self._bottom = stages[:cut]
        self._top = stages[cut:]
        if self.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            for stage in self._top:
                stage.requires_grad_(True)
                stage.train()

    @property
    def spatial(self) -> bool:
        """Whether the cached output is a spatial map rather than a pooled vector."""
        return bool(self._bottom)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
            for stage in self._top:
                stage.train(mode)
        return self

    def cached_forward(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature cache stores: the frozen bottom's map, or the pooled vector of the whole backbone."""
        if not self.spatial:
            return self.backbone(images)
        for stage in self._bottom:
            images = stage(images)
        return images

    def cache_fingerprint(self) -> str:
        """Identity of the cached output: the frozen tensors that produce it and where the backbone is cut."""
        if not self.spatial:
            return state_fingerprint(self.backbone)
        frozen = nn.ModuleList(self._bottom)
        return f"{state_fingerprint(frozen)}-map{len(self._bottom)}"

    def _encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.spatial:
            return self.head(features), None
        for stage in self._top:
            features = stage(features)
        # timm's own head pooling (e.g. ConvNeXt's pool + LayerNorm), as in the unsplit forward; presets: mean.
        pooled = (
            features.mean(dim=(2, 3))
            if self.preset
            else self.backbone.forward_head(features, pre_logits=True)
        )
        label_logits = None
        if self.label_pool is not None:
            label_logits = self.label_pool(features.flatten(2).transpose(1, 2))
        return self.head(pooled), label_logits

    def encode(
        self, images: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedding [batch, embed_dim] and, with label attention, per-label logits, from images or cached features."""
        if features is None:
            assert images is not None
            if self.freeze:
                with torch.no_grad():
                    features = self.cached_forward(images)
            else:
                features = self.cached_forward(images)
        return self._encode(features.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images=images)[0]

    def embed_cached(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding from what `cached_forward` computed (the feature cache's content)."""
        return self.encode(features=features)[0]
