"""The built-in image encoders' names (`weights: null` in their config files). Torch-free.

The one list: `image_encoders` builds each of them, and `settings` checks `model.image_encoder.name` against
it before any work starts, without importing torch.
"""

from __future__ import annotations

EFFICIENTNET_LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESNETS = ("resnext50", "resnet50")
PRESETS = (*EFFICIENTNET_LITES, *RESNETS, "small_cnn")
