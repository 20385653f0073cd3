"""The encoder contracts (mlcap.models.contracts): every shipped encoder kind satisfies its Protocol, a class
missing a member does not, and the built-in encoders' names come from one torch-free list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mlcap.models import contracts
from mlcap.models.caption_encoder import RNNCaptionEncoder
from mlcap.models.image_encoders import ImageEncoder
from mlcap.models.sentence_encoder import SentenceEncoder

ROOT = Path(__file__).resolve().parents[1]


def _image(name: str, weights: str | None = None, **settings: object) -> ImageEncoder:
    values: dict = {"pretrained": False, "freeze": True, "dropout": 0.0, "trainable_blocks": 0}
    values |= {"label_attention": False, "embed_dim": 8, "num_labels": 3}
    return ImageEncoder(name=name, weights=weights, **(values | settings))


@pytest.mark.parametrize(
    ("name", "weights", "settings"),
    [
        ("small_cnn", None, {}),
        ("small_cnn", None, {"trainable_blocks": 1, "label_attention": True}),
        ("efficientnet_lite0", None, {}),
        ("resnet18", "none", {}),  # any timm model (model/image_encoder=timm), random weights: offline
    ],
)
def test_image_encoders_satisfy_the_contract(name: str, weights: str | None, settings: dict) -> None:
    encoder = _image(name, weights, **settings)
    assert isinstance(encoder, contracts.ImageEncoder)
    assert not isinstance(encoder, contracts.CachedTextEncoder)


def test_text_encoders_satisfy_their_contracts() -> None:
    rnn = RNNCaptionEncoder(
        vocab_size=10, word_dim=4, hidden_dim=4, embed_dim=8, rnn="gru", attention=True, pooling="last",
        dropout=0.0, word_vectors=None,
    )  # fmt: skip
    assert isinstance(rnn, contracts.CaptionEncoder)
    assert not isinstance(rnn, contracts.ImageEncoder)
    sentence = SentenceEncoder("minilm", trainable_layers=0, max_tokens=16)
    assert isinstance(sentence, contracts.CachedTextEncoder)
    assert not isinstance(sentence, contracts.ImageEncoder)


class _NoFingerprint(nn.Module):
    """An image encoder that lacks `cache_fingerprint`: the feature cache could not key its output."""

    name, freeze, input_size, interpolation = "plain", True, (32, 32), "bilinear"
    mean = std = (0.5, 0.5, 0.5)
    spatial = False

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Flatten()

    def cached_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def encode(
        self, images: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.cached_forward(images) if features is None else features, None


class _WithFingerprint(_NoFingerprint):
    def cache_fingerprint(self) -> str:
        return "plain"


def test_a_class_missing_a_member_fails_the_contract() -> None:
    assert isinstance(_WithFingerprint(), contracts.ImageEncoder)  # the same class with the member passes
    assert not isinstance(_NoFingerprint(), contracts.ImageEncoder)
    assert not isinstance(object(), contracts.CaptionEncoder)

    class NoDim:
        def cache_fingerprint(self) -> str:
            return ""

        def cached_input(self, captions: list[str], batch_size: int = 128) -> torch.Tensor:
            return torch.zeros(len(captions), 1)

        def encode(self, cached: torch.Tensor) -> torch.Tensor:
            return cached

        def parameters(self, recurse: bool = True) -> list[torch.Tensor]:
            return []

    assert not isinstance(NoDim(), contracts.CachedTextEncoder)


def test_the_settings_check_takes_the_presets_from_one_list_without_torch() -> None:
    code = (
        "import sys\n"
        "from mlcap.models.presets import PRESETS\n"
        "from mlcap.settings import IMAGE_PRESETS\n"
        "assert IMAGE_PRESETS is PRESETS, IMAGE_PRESETS\n"
        "assert 'torch' not in sys.modules, 'mlcap.settings imported torch'\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
