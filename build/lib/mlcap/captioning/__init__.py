"""Caption generation: the captioner's metrics, baselines and training results (model: mlcap.models.captioner).

Torch-free at this level, so the settings check can tell the captioner's config from the classifier's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CAPTIONER_TARGET = "mlcap.models.captioner.Captioner"


def is_captioner(model: Any) -> bool:
    """Whether the model node is the captioner (conf/model/captioner.yaml names its class)."""
    return isinstance(model, Mapping) and model.get("_target_") == CAPTIONER_TARGET
