"""Any timm image model and any sentence-transformers model, with weights made here (nothing downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import timm.data
import torch
from conftest import REPO
from omegaconf import DictConfig

from mlcap.models.image_encoders import ImageEncoder
from mlcap.models.sentence_encoder import SentenceEncoder, sentence_source
from mlcap.settings import SettingsError, validate
from mlcap.train import train

# Two families: a ResNet (stem + layers) and a ConvNeXt (stem + stages, LayerNorm in its head).
ARCHITECTURES = ("resnet10t", "convnext_atto")


def changed_by_training(checkpoint: str, prefix: str, before: dict[str, torch.Tensor]) -> set[str]:
    """The tensors of `before` that training changed, read from the checkpoint (which holds them all)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    after = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    assert set(after) == set(before)
    return {key for key, value in before.items() if not torch.equal(after[key], value)}


def timm_encoder(name: str, weights: str, **settings: object) -> ImageEncoder:
    """An image encoder of model/image_encoder=timm's settings spelled out; `settings` replace them."""
    values: dict = {"pretrained": True, "freeze": True, "dropout": 0.0, "trainable_blocks": 0}
    values |= {"label_attention": False, "embed_dim": 8, "num_labels": 19}
    return ImageEncoder(name=name, weights=weights, **(values | settings))


def saved_timm_weights(name: str, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised timm model saved as a checkpoint dict holding its state dict (as trainers do)."""
    torch.manual_seed(1)
    state = timm.create_model(name, pretrained=False, num_classes=0).state_dict()
    path = folder / f"{name}.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path, state


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_timm_weights_file_loads_its_tensors_and_timm_preprocessing(name: str, tmp_path: Path) -> None:
    path, saved = saved_timm_weights(name, tmp_path)
    encoder = timm_encoder(name, str(path), trainable_blocks=1)
    loaded = encoder.backbone.state_dict()
    assert list(loaded) == list(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
    config = timm.data.resolve_model_data_config(encoder.backbone)
    assert (encoder.mean, encoder.std) == (tuple(config["mean"]), tuple(config["std"]))
    assert (
        encoder.input_size == tuple(config["input_size"][1:])
        and encoder.interpolation == config["interpolation"]
    )
    # The split at feature_info: bottom (cached) then top (trained) then timm's head pooling == the whole model.
    images = torch.randn(2, 3, 64, 64)
    features = encoder.cached_forward(images)
    assert features.ndim == 4 and all(not p.requires_grad for s in encoder._bottom for p in s.parameters())
    top = features
    for stage in encoder._top:
        top = stage(top)
    torch.testing.assert_close(encoder.backbone.forward_head(top, pre_logits=True), encoder.backbone(images))
    assert any(p.requires_grad for p in encoder._top[0].parameters())
    assert encoder.encode(features=features)[0].shape == (2, 8)


@pytest.mark.parametrize("damage", ["prefixed-keys", "zero-byte"])
def test_a_weights_file_that_does_not_fit_is_refused_not_ignored(damage: str, tmp_path: Path) -> None:
    """timm loads without a classifier non-strictly: a file of other key names once left random weights."""
    path, state = saved_timm_weights("resnet10t", tmp_path)
    if damage == "prefixed-keys":  # e.g. a Lightning checkpoint of another project: `model.` before every key
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
        match = r"lacks \d+ of timm resnet10t's \d+ backbone tensors .*model\.conv1"
    else:
        path.write_bytes(b"")
        match = "cannot be loaded"
    with pytest.raises(RuntimeError, match=rf"model\.image_encoder\.weights={path}.*{match}"):
        timm_encoder("resnet10t", str(path))


def test_a_vit_is_refused_for_trainable_blocks_but_works_frozen() -> None:
    with pytest.raises(ValueError, match="not a chain of stages.*trainable_blocks=0"):
        timm_encoder("vit_tiny_patch16_224", "none", trainable_blocks=1)
    encoder = timm_encoder("vit_tiny_patch16_224", "none")
    assert encoder.cached_forward(torch.randn(1, 3, 224, 224)).shape == (1, 192)


@pytest.mark.parametrize(("name", "blocks"), [("resnet10t", 1), ("convnext_atto", 0)])
def test_a_timm_model_trains_on_cached_features(
    name: str, blocks: int, compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    path, saved = saved_timm_weights(name, tmp_path)
    cfg = compose_train(
        "model/image_encoder=timm",
        f"model.image_encoder.name={name}",
        f"model.image_encoder.weights={path}",
        f"model.image_encoder.trainable_blocks={blocks}",
        "data.image_size=32",
        "data.cache_views=1",
        "trainer.max_epochs=1",
    )
    metrics = train(cfg)
    # Trained from the weights file: with 1 block, timm's last stage moved; every other tensor is the file's.
    model = timm.create_model(name, pretrained=False, num_classes=0)
    last_stage = model.feature_info[-1]["module"]
    changed = changed_by_training(metrics["checkpoint"], "net.image_encoder.backbone.", saved)
    assert all(key.startswith(f"{last_stage}.") for key in changed), changed  # weights and norm statistics
    assert bool(changed & {key for key, _ in model.named_parameters()}) == (blocks > 0), changed
    cached = list((tmp_path / "cache" / "features").glob(f"{name}-*.npy"))
    assert len(cached) == 1  # extracted once, with timm's bicubic resize in its key
    assert metrics["model_size_mb"] * 1e6 > sum(
        t.numel() * 4 for t in torch.load(path)["state_dict"].values()
    )


def test_timm_config_takes_the_models_input_size(compose_train: Callable[..., DictConfig]) -> None:
    from mlcap.classifier_task import build_model
    from mlcap.train import build_datamodule

    cfg = compose_train("model/image_encoder=timm", "model.image_encoder.name=resnet10t")
    cfg.data.image_size = None  # fast_overrides set 32; timm.yaml's own default is null
    cfg.model.image_encoder.weights = "none"
    datamodule = build_datamodule(cfg)
    build_model(cfg, datamodule)
    assert datamodule.image_preprocessing.size == (176, 176)  # resnet10t's data config (trained at 176 px)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.image_encoder.name=resnet10t"], "with model.image_encoder.weights=null it must be one of"),
        (["model/image_encoder=timm"], "model.image_encoder.name is required"),
        (
            [
                "model/image_encoder=timm",
                "model.image_encoder.name=resnet10t",
                "model.image_encoder.weights=/no/w.pt",
            ],
            "model.image_encoder.weights='/no/w.pt' is not allowed: it must be hub, none or the path",
        ),
    ],
)
def test_bad_encoder_settings_are_refused(
    overrides: list[str], message: str, compose_train: Callable[..., DictConfig]
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_train(*overrides))


def test_offline_hub_weights_stop_before_any_data_naming_model_cache_and_option(tmp_path: Path) -> None:
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(empty), "TORCH_HOME": str(empty)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "model/image_encoder=timm", "model.image_encoder.name=resnet10t",
         f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1  # one line (issue 19, finding 5), as every expected error
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: timm's pretrained weights for resnet10t") and "Traceback" not in output
    assert str(empty / "hub") in last and "model.image_encoder.weights=<path" in last
    assert not cache.exists()  # no demo data made, no features


def tiny_sentence_model(folder: Path) -> Path:
    """A 2-layer, 32-d BERT with MiniLM's tokenizer, random weights, saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(sentence_source("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    word = models.Transformer(str(folder / "bert"), max_seq_length=48)
    model = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    model.save(str(folder / "tiny-st"))
    return folder / "tiny-st"


def test_sentence_encoder_from_a_local_directory_fine_tunes_and_trains(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    folder = tiny_sentence_model(tmp_path)
    encoder = SentenceEncoder(str(folder), trainable_layers=1, max_tokens=16)
    untrained = {key: value.clone() for key, value in encoder.state_dict().items()}
    assert encoder.dim == 32 and len(encoder.top_layers) == 1
    states = encoder.cached_input(["a cat on a mat", "two dogs"])
    assert states.shape == (2, 16, 32) and encoder.encode(states).shape == (2, 32)
    with pytest.raises(ValueError, match=r"sentence_trainable_layers must be in \[0, 2\]"):
        SentenceEncoder(str(folder), trainable_layers=3, max_tokens=16)
    cfg = compose_train(
        "model.text_encoder=sentence", f"model.sentence_model={folder}", "model.sentence_trainable_layers=1",
        "model/image_encoder=small_cnn",
        "trainer.max_epochs=1",
    )  # fmt: skip
    metrics = train(cfg)
    # The top layer fine-tuned from the directory's weights; the frozen rest is stored as the directory has it.
    changed = changed_by_training(metrics["checkpoint"], "net.sentence_encoder.", untrained)
    top = {key for key, p in encoder.named_parameters() if p.requires_grad}
    assert changed and changed <= top, changed
    assert len(list((tmp_path / "cache" / "features").glob("text-tiny_st-*.npy"))) == 2  # train+val, val


def test_sentence_encoder_not_available_offline_names_it_the_cache_and_the_directory_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(OSError, match="all-mpnet-base-v2") as caught:
        SentenceEncoder("all-mpnet-base-v2", trainable_layers=0, max_tokens=48)
    message = str(caught.value)
    assert "sentence-transformers/all-mpnet-base-v2" in message and str(tmp_path / "hub") in message
    assert "model.sentence_model=/path/to/model" in message
    with pytest.raises(FileNotFoundError, match="model.sentence_model=/no/such/dir: no such directory"):
        sentence_source("/no/such/dir")
