"""The one batch type the data side serves and the model reads (no dicts of optional keys)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Rows of captions and images, as tensors.

    The image arrives in exactly one form: `images`, raw pixels [rows, 3, H, W] for a backbone that runs in
    the model, or `features`, the cached output of a frozen backbone (pooled [rows, dim] or a feature map).
    `sentences` are a frozen sentence encoder's cached caption states, when the model has one; `labels` the
    multi-hot targets [rows, labels] of a labelled split (None when predicting).
    """

    tokens: torch.Tensor  # [rows, max_len] word ids, 0 = padding
    lengths: torch.Tensor  # [rows] real tokens per caption (at least 1)
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    sentences: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.features is None):
            raise ValueError("a Batch holds either raw `images` or cached `features`, not both or neither")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """Lightning moves a batch with this method (any type with `.to` is transferable)."""
        moved = {
            f.name: value.to(device) if isinstance(value := getattr(self, f.name), torch.Tensor) else value
            for f in dataclasses.fields(self)
        }
        return Batch(**moved)

    @property
    def target(self) -> torch.Tensor:
        """The labels, for the steps that need them (training, validation)."""
        if self.labels is None:
            raise ValueError(
                "this batch has no labels (a prediction split); training and validation need them"
            )
        return self.labels
