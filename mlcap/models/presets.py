"""The built-in image encoder: its class (`_target_`) and its presets' names (`weights: null`). Torch-free.

The one list: `backbones` builds each of them, and `settings` checks `model.image_encoder.name` against it
before any work starts, without importing torch. Those checks hold for the built-in class only: an encoder
class of one's own (another `_target_`) takes the keys of base.yaml with its own meaning of name and weights.
"""

from __future__ import annotations

# conf/model/image_encoder/base.yaml's `_target_` (checkpoints record it too).
BUILT_IN_ENCODER = "mlcap.models.image_encoders.ImageEncoder"
EFFICIENTNET_LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESNETS = ("resnext50", "resnet50")
PRESETS = (*EFFICIENTNET_LITES, *RESNETS, "small_cnn")
