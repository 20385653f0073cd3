"""The encoder contracts (mlcap.models.contracts): every shipped encoder kind satisfies its Protocol, a class
missing a member does not, and the built-in encoders' names come from one torch-free list."""

from __future__ import annotations

import ast
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


def _protocol_members(protocol: type) -> set[str]:
    """A Protocol's members: its annotated attributes and the methods and properties its body defines."""
    body = {name for name in vars(protocol) if not name.startswith("_")}
    return body | set(protocol.__annotations__)


def _image_encoder_uses(path: Path, params: set[str]) -> set[str]:
    """The attributes a module reads of the image encoder: of a function argument annotated `ImageEncoder` (or
    named in `params`), and of any `<...>.image_encoder`."""
    uses = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef):
            continue
        args = function.args.args + function.args.kwonlyargs
        names = {
            a.arg
            for a in args
            if a.arg in params or ast.unparse(a.annotation or ast.Name("")) == "ImageEncoder"
        }
        for node in ast.walk(function):
            if not isinstance(node, ast.Attribute):
                continue
            inner = node.value
            if (isinstance(inner, ast.Name) and inner.id in names) or (
                isinstance(inner, ast.Attribute) and inner.attr == "image_encoder"
            ):
                uses.add(node.attr)
    return uses


@pytest.mark.parametrize(
    ("module", "params"),
    [
        ("mlcap/extraction.py", set()),
        ("mlcap/predict.py", set()),
        ("mlcap/data/feature_cache.py", {"backbone"}),  # extract_features(encoder, ...) from extraction
    ],
)
def test_the_data_side_and_prediction_use_only_the_image_encoder_contract(
    module: str, params: set[str]
) -> None:
    uses = _image_encoder_uses(ROOT / module, params)
    assert uses, f"{module}: the check found no use of the image encoder (renamed?)"
    assert uses <= _protocol_members(contracts.ImageEncoder), uses - _protocol_members(contracts.ImageEncoder)


def test_the_built_in_encoder_is_the_target_the_settings_checks_as_built_in() -> None:
    """settings applies the preset/timm checks to `_target_` presets.BUILT_IN_ENCODER only; base.yaml names it."""
    from omegaconf import OmegaConf

    from mlcap.models.presets import BUILT_IN_ENCODER

    assert f"{ImageEncoder.__module__}.{ImageEncoder.__qualname__}" == BUILT_IN_ENCODER
    assert OmegaConf.load(ROOT / "conf/model/image_encoder/base.yaml")["_target_"] == BUILT_IN_ENCODER
