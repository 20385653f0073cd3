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
    # The row of each item when a row's captions come as items of their own (validation and prediction over
    # several captions an image): probabilities are averaged per row (`per_row`). None: one item a row.
    groups: torch.Tensor | None = None

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

    def per_row(self, values: torch.Tensor) -> torch.Tensor:
        """Per-item values [items, ...] averaged over each row's items ([rows, ...]); as is with one item a row."""
        if self.groups is None:
            return values
        rows = int(self.groups.max()) + 1
        sums = torch.zeros((rows, *values.shape[1:]), dtype=values.dtype, device=values.device)
        sums.index_add_(0, self.groups, values)
        counts = torch.bincount(self.groups, minlength=rows).to(values.dtype)
        return sums / counts.view(-1, *([1] * (values.ndim - 1)))

    @property
    def target(self) -> torch.Tensor:
        """The labels, for the steps that need them (training, validation)."""
        if self.labels is None:
            raise ValueError(
                "this batch has no labels (a prediction split); training and validation need them"
            )
        return self.labels
