"""Losses that conf/model/loss builds and torch does not ship in that form."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def weighted_bce(pos_weight: Sequence[float], cap: float) -> nn.BCEWithLogitsLoss:
    """BCE on logits with each label's positives weighted by `pos_weight` (negatives/positives on the train
    split, which train.py computes), capped at `cap` so that a label seen once or never cannot dominate."""
    weights = torch.tensor(pos_weight, dtype=torch.float32).clamp(max=cap)
    return nn.BCEWithLogitsLoss(pos_weight=weights)
