"""Each model switch, composed from the real config, builds the network it names: modules, parameter counts,
outputs, loss, optimizer and schedule; the checkpoint alone rebuilds it. Nothing here trains."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from timm.loss import AsymmetricLossMultiLabel
from torch import nn

from mlcap.batch import Batch
from mlcap.checkpoints import LAYOUT, LAYOUT_KEY, CheckpointError
from mlcap.classifier_task import build_model
from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.models.caption_encoder import RNNCaptionEncoder
from mlcap.models.image_encoders import SmallCNN
from mlcap.models.lit_module import MultiLabelClassifier
from mlcap.models.sentence_encoder import SentenceEncoder
from mlcap.settings import validate
from mlcap.train import build_datamodule

LABELS = 19
LITE0_FEATURES = 1280
# conftest.fast_overrides' sizes: model.word_dim=16, model.hidden_dim=16, model.embed_dim=32.
SIZES = {"word_dim": 16, "hidden_dim": 16, "embed_dim": 32}
CAPTIONS = ["a man riding a horse", "a plate of pizza", "two dogs on a beach", "a red bus", "a cat", "skis"]

Build = Callable[..., tuple[MultiLabelClassifier, DictConfig]]


@pytest.fixture
def build(compose_train: Callable[..., DictConfig]) -> Build:
    """(model, config) for overrides of the real config, built as train.py builds them, seeded alike."""
    datamodules: dict[int, CaptionImageDataModule] = {}

    def _build(*overrides: str) -> tuple[MultiLabelClassifier, DictConfig]:
        cfg = compose_train(*overrides)
        validate(cfg)
        if cfg.data.batch_size not in datamodules:
            datamodules[cfg.data.batch_size] = build_datamodule(cfg)
        torch.manual_seed(0)
        return build_model(cfg, datamodules[cfg.data.batch_size]), cfg

    return _build


def expected_trainable(
    vocab: int,
    *,
    word_dim: int,
    hidden_dim: int,
    embed_dim: int,
    caption: bool = True,
    attention: bool = True,
    batch_norm: bool = True,
    rnn: str = "gru",
    image_features: int = LITE0_FEATURES,
) -> int:
    """Trainable parameters of the study's network with a frozen backbone, counted by hand from its layers."""
    e, h, w = embed_dim, hidden_dim, word_dim
    text = 0
    if caption:
        gates = {"gru": 3, "lstm": 4}[rnn]
        recurrent = 2 * gates * (h * w + h * h + 2 * h)  # both directions: input and hidden weights, 2 biases
        pooling = (2 * h * 2 * h + 2 * h) + (2 * h + 1) if attention else 0
        text = vocab * w + recurrent + pooling + (2 * h * e + e)
    fused = e * (2 if caption else 1)
    image = image_features * e + e
    return text + image + (2 * fused if batch_norm else 0) + fused * LABELS + LABELS


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def inputs(model: MultiLabelClassifier, rows: int = 6, seed: int = 0) -> Batch:
    """A batch of what the data side serves this model: cached features (frozen backbone) or images, token
    ids, and the sentence encoder's cached input when it has one."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (rows,), generator=generator)
    tokens = torch.randint(2, len(model.metadata.vocabulary), (rows, 8), generator=generator)
    tokens[torch.arange(8)[None, :] >= lengths[:, None]] = 0
    images = torch.rand(rows, 3, 32, 32, generator=generator)
    encoder, sentence = model.net.image_encoder, model.net.sentence_encoder
    with torch.no_grad():
        image = {"features": encoder.cached_forward(images)} if encoder.freeze else {"images": images}
        sentences = sentence.cached_input(CAPTIONS[:rows]) if sentence is not None else None
    labels = (torch.rand(rows, LABELS, generator=generator) < 0.2).float()
    return Batch(tokens, lengths, sentences=sentences, labels=labels, **image)


def outputs(model: MultiLabelClassifier, batch: Batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (len(batch), LABELS)
    return logits


def with_tokens(batch: Batch, tokens: torch.Tensor) -> Batch:
    return Batch(tokens, batch.lengths, batch.images, batch.features, batch.sentences, batch.labels)


def test_the_default_model_is_the_study_network(build: Build) -> None:
    model, cfg = build()
    net = model.net
    assert isinstance(net.rnn_encoder, RNNCaptionEncoder) and isinstance(net.rnn_encoder.rnn, nn.GRU)
    assert net.rnn_encoder.rnn.bidirectional and net.rnn_encoder.attention is not None
    assert net.sentence_encoder is None and net.aux is None and net.image_encoder.label_pool is None
    assert net.image_encoder.name == "efficientnet_lite0" and net.image_encoder.freeze
    assert not any(p.requires_grad for p in net.image_encoder.backbone.parameters())
    assert isinstance(net.norm, nn.BatchNorm1d) and net.norm.num_features == 2 * SIZES["embed_dim"]
    assert type(model.loss_fn) is nn.BCEWithLogitsLoss and model.loss_fn.pos_weight is None
    assert trainable(model) == expected_trainable(len(model.metadata.vocabulary), **SIZES)
    assert model.hparams["model"]["optimizer"]["lr"] == cfg.lr and model.hparams["model"]["scheduler"] is None
    outputs(model, inputs(model))


# Each study switch and size: (overrides, the parameter count's arguments that change, a check of the network).
SWITCHES: list[tuple[list[str], dict[str, Any], Callable[[MultiLabelClassifier], bool]]] = [
    (["model.caption=false"], {"caption": False}, lambda m: m.net.rnn_encoder is None and not m.net.has_text),
    (["model.attention=false"], {"attention": False}, lambda m: m.net.rnn_encoder.attention is None),
    (["model.batch_norm=false"], {"batch_norm": False}, lambda m: isinstance(m.net.norm, nn.Identity)),
    (["model.word_dim=12"], {"word_dim": 12}, lambda m: m.net.rnn_encoder.embedding.embedding_dim == 12),
    (["model.hidden_dim=24"], {"hidden_dim": 24}, lambda m: m.net.rnn_encoder.rnn.hidden_size == 24),
    (["model.embed_dim=40"], {"embed_dim": 40}, lambda m: m.net.image_encoder.head[1].out_features == 40),
    (["model.rnn=lstm"], {"rnn": "lstm"}, lambda m: isinstance(m.net.rnn_encoder.rnn, nn.LSTM)),
]


@pytest.mark.parametrize(
    ("overrides", "changes", "check"), SWITCHES, ids=lambda v: ",".join(v) if isinstance(v, list) else ""
)
def test_each_switch_changes_the_network_as_it_says(
    build: Build, overrides: list[str], changes: dict[str, Any], check: Callable[[MultiLabelClassifier], bool]
) -> None:
    base, _ = build()
    model, _ = build(*overrides)
    assert check(model)
    vocab = len(model.metadata.vocabulary)
    assert trainable(model) == expected_trainable(vocab, **(SIZES | changes)) != trainable(base)
    batch = inputs(model)
    assert not torch.allclose(outputs(model, batch), outputs(base, batch))


def test_without_caption_no_text_reaches_the_model_whatever_the_text_encoder(build: Build) -> None:
    """model.caption=false is the image-only model: no text module, and the captions do not change the output."""
    for text_encoder in ("rnn", "sentence", "rnn+sentence"):
        model, _ = build("model.caption=false", f"model.text_encoder={text_encoder}")
        net = model.net
        assert net.rnn_encoder is None and net.sentence_encoder is None and net.sentence_proj is None
        assert net.classifier[1].in_features == SIZES["embed_dim"]
        assert "text" not in net.head_logits(inputs(model)) and model.hparams["model"]["caption"] is False
        batch = inputs(model)
        other = with_tokens(batch, torch.flip(batch.tokens, dims=[0]))
        torch.testing.assert_close(outputs(model, batch), outputs(model, other))
    base, _ = build()
    assert trainable(model) == trainable(base) - trainable(base.net.rnn_encoder) - SIZES["embed_dim"] * (
        2 + LABELS
    )


def test_rnn_pooling_without_attention_is_the_last_states_or_the_mean(build: Build) -> None:
    last, _ = build("model.attention=false")
    mean, _ = build("model.attention=false", "model.rnn_pooling=mean")
    assert (last.net.rnn_encoder.pooling, mean.net.rnn_encoder.pooling) == ("last", "mean")
    assert trainable(last) == trainable(mean)
    batch = inputs(mean)
    assert not torch.allclose(outputs(mean, batch), outputs(last, batch))


def test_word_vector_switches_change_the_initial_embedding(build: Build) -> None:
    """fasttext_sg, word2vec_sg, word2vec_cbow and none give four different initial embeddings, and the seed
    reaches the trained vectors."""
    weights = {
        name: build(f"model.word_vectors={name}")[0].net.rnn_encoder.embedding.weight.detach()
        for name in ("fasttext_sg", "word2vec_sg", "word2vec_cbow", "none")
    }
    names = list(weights)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(weights[a], weights[b]), (a, b)
    assert torch.all(weights["fasttext_sg"][0] == 0)  # the padding row of trained vectors
    reseeded = build("seed=1")[0].net.rnn_encoder.embedding.weight.detach()
    assert not torch.allclose(reseeded, weights["fasttext_sg"])


@pytest.mark.parametrize(
    ("text_encoder", "rnn", "sentence"),
    [("rnn", True, False), ("sentence", False, True), ("rnn+sentence", True, True)],
)
def test_text_encoder_choice_builds_that_text_side(
    build: Build, text_encoder: str, rnn: bool, sentence: bool
) -> None:
    model, _ = build(f"model.text_encoder={text_encoder}")
    net, e = model.net, SIZES["embed_dim"]
    assert (net.rnn_encoder is not None, net.sentence_encoder is not None) == (rnn, sentence)
    assert net.classifier[1].in_features == e * (1 + rnn + sentence)
    batch = inputs(model)
    other_tokens = with_tokens(batch, torch.flip(batch.tokens, dims=[0]))
    assert torch.allclose(outputs(model, batch), outputs(model, other_tokens)) != rnn
    if sentence:
        assert isinstance(net.sentence_encoder, SentenceEncoder) and net.sentence_encoder.name == "minilm"
        assert not any(p.requires_grad for p in net.sentence_encoder.parameters())  # frozen: cached embedding
        assert net.sentence_proj[0].in_features == 384 and net.sentence_proj[0].out_features == e
        other = Batch(batch.tokens, batch.lengths, features=batch.features, sentences=batch.sentences.flip(0))
        assert not torch.allclose(outputs(model, batch), outputs(model, other))


def test_sentence_trainable_layers_fine_tune_that_many_layers(build: Build) -> None:
    frozen, _ = build("model.text_encoder=sentence")
    tuned, _ = build(
        "model.text_encoder=sentence", "model.sentence_trainable_layers=2", "model.sentence_max_tokens=16"
    )
    layer = trainable(tuned.net.sentence_encoder.top_layers[0])
    assert len(tuned.net.sentence_encoder.top_layers) == 2 and tuned.net.sentence_encoder.max_tokens == 16
    assert trainable(tuned) == trainable(frozen) + 2 * layer and layer > 1_000_000
    assert inputs(tuned).sentences.shape == (6, 16, 384)  # token states for the layers that train


def test_image_encoder_choice_and_its_settings(build: Build) -> None:
    base, _ = build()
    cnn, _ = build("model/image_encoder=small_cnn")
    encoder = cnn.net.image_encoder
    assert isinstance(encoder.backbone, SmallCNN) and not encoder.freeze
    assert all(p.requires_grad for p in encoder.backbone.parameters())
    vocab = len(cnn.metadata.vocabulary)
    head = expected_trainable(vocab, **SIZES, image_features=encoder.feature_dim)
    assert trainable(cnn) == head + trainable(encoder.backbone)
    assert inputs(cnn).images is not None and outputs(cnn, inputs(cnn)) is not None
    attention, _ = build("model.image_encoder.label_attention=true")
    assert attention.net.image_encoder.label_pool is not None
    assert trainable(attention) == trainable(base) + 2 * (LITE0_FEATURES * LABELS + LABELS)
    batch = inputs(attention)
    assert batch.features.ndim == 4  # the spatial map is cached, not the pooled vector
    assert not torch.allclose(outputs(attention, batch), outputs(base, inputs(base)))
    aux, _ = build("model.aux_heads=true")
    assert set(aux.net.aux) == {"image", "text"} and set(aux.net.head_logits(inputs(aux))) == {
        "fusion",
        "image",
        "text",
    }
    assert trainable(aux) == trainable(base) + 2 * (SIZES["embed_dim"] * LABELS + LABELS)
    dropout, _ = build("model.dropout=0.4")
    assert {m.p for m in dropout.net.modules() if isinstance(m, nn.Dropout)} == {
        0.4,
        0.0,
    }  # image head: its own


def test_loss_choice(build: Build) -> None:
    bce, _ = build("model/loss=bce")
    asl, _ = build("model/loss=asl")
    weighted, cfg = build("model/loss=weighted_bce")
    assert type(bce.loss_fn) is nn.BCEWithLogitsLoss and isinstance(asl.loss_fn, AsymmetricLossMultiLabel)
    assert (asl.loss_fn.gamma_neg, asl.loss_fn.gamma_pos, asl.loss_fn.clip) == (4, 0, 0.05)
    labels = build_datamodule(cfg).labels("train")
    positives = labels.sum(0)
    expected = ((len(labels) - positives) / positives.clamp(min=1)).clamp(max=50.0)
    torch.testing.assert_close(weighted.loss_fn.pos_weight, expected, atol=1e-3, rtol=0)
    assert len(weighted.hparams["model"]["loss"]["pos_weight"]) == LABELS  # travels in the checkpoint
    logits, target = torch.randn(8, LABELS), (torch.rand(8, LABELS) < 0.2).float()
    values = [float(m.loss_fn(logits, target)) for m in (bce, asl, weighted)]
    assert len(set(values)) == 3


def _configure(model: MultiLabelClassifier, steps: int = 40) -> tuple[torch.optim.Optimizer, Any]:
    model._trainer = SimpleNamespace(estimated_stepping_batches=steps)  # what configure_optimizers reads
    configured = model.configure_optimizers()
    if isinstance(configured, Mapping):
        return configured["optimizer"], configured["lr_scheduler"]
    return configured, None


def test_optimizer_and_schedule(build: Build) -> None:
    model, cfg = build()
    optimizer, schedule = _configure(model)
    assert type(optimizer) is torch.optim.Adam and schedule is None
    assert [g["lr"] for g in optimizer.param_groups] == [cfg.lr]
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    assert sum(p.numel() for p in optimizer.param_groups[0]["params"]) == trainable(model)
    model, _ = build("lr=0.03", "model.optimizer.weight_decay=0.01", "model/scheduler=onecycle")
    optimizer, schedule = _configure(model, steps=40)
    assert [(g["max_lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.03, 0.01)]
    assert (
        isinstance(schedule["scheduler"], torch.optim.lr_scheduler.OneCycleLR)
        and schedule["interval"] == "step"
    )
    assert schedule["scheduler"].total_steps == 40
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03 / 25)  # warming up from max_lr / div_factor


def test_pretrained_parts_train_at_their_own_rate(build: Build) -> None:
    model, _ = build(
        "model.image_encoder.trainable_blocks=1", "model.backbone_lr_scale=0.5", "model.text_encoder=rnn+sentence",
        "model.sentence_trainable_layers=1", "model.sentence_lr_scale=0.1", "lr=0.01",
    )  # fmt: skip
    optimizer, _ = _configure(model)
    groups = {round(g["lr"], 6): {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert sorted(groups) == [0.001, 0.005, 0.01]
    assert groups[0.005] == {id(p) for p in model.net.image_encoder._top[0].parameters()}
    assert groups[0.001] == {id(p) for p in model.net.sentence_encoder.top_layers[0].parameters()}
    assert sum(len(g) for g in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)


def _plain(value: Any) -> bool:
    if isinstance(value, Mapping):
        return type(value) is dict and all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def test_the_checkpoint_alone_rebuilds_the_model(build: Build, tmp_path: Path) -> None:
    model, _ = build("model/loss=weighted_bce", "model.attention=false", "model/scheduler=onecycle")
    assert set(model.hparams) == {"model", "data", "threshold", "tta"}
    assert all(_plain(value) for value in model.hparams.values())  # no live objects, no DictConfig
    assert (
        model.hparams["data"]["label_names"] == [str(i) for i in range(1, 20)]
        and "preprocessing" not in model.hparams
    )
    path = tmp_path / "model.ckpt"
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=True)
    loaded = MultiLabelClassifier.load_from_checkpoint(path, load_pretrained=False)
    assert torch.load(path, weights_only=False)[LAYOUT_KEY] == LAYOUT
    batch = inputs(model)
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch))
    assert loaded.net.rnn_encoder.attention is None and loaded.label_names == model.label_names


def test_a_checkpoint_of_the_previous_layout_is_refused_in_one_line(build: Build, tmp_path: Path) -> None:
    model, _ = build()
    old = {
        "state_dict": model.state_dict(),
        "hyper_parameters": {
            "label_ids": [int(name) for name in model.label_names],
            "vocab_tokens": ["[PAD]", "[UNK]"],
            "attention": True,
        },
    }
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with pytest.raises(CheckpointError, match="retrain with this version") as caught:
        MultiLabelClassifier.load_from_checkpoint(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
