"""The encoder contracts: the members of an image or text encoder that the rest of mlcap may use.

The concrete encoders (`image_encoders.ImageEncoder`, `caption_encoder.RNNCaptionEncoder`,
`sentence_encoder.SentenceEncoder`) are torch modules that satisfy these Protocols; the code that joins model
and data (`extraction`, `predict`, `captioning`), the fusion network, the captioner and the LightningModule use
nothing else of them. A new image encoder is one class with these members plus one YAML under
conf/model/image_encoder/ whose `_target_` names it. Each encoder must also be an `nn.Module` (the networks
register it as a submodule, so its weights train, move and save with them); the Protocols name only the
module members that code outside the models calls on the encoder itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class ImageEncoder(Protocol):
    """Images (or what the data side cached of them) -> an embedding, with the preprocessing it expects.

    With `freeze` the bottom never trains, so the data side may run `cached_forward` once per image and view
    (the feature cache, keyed by `name`, `cache_fingerprint()` and `spatial`) and serve its output in place
    of the images.
    """

    name: str  # the cache key's encoder part
    freeze: bool  # whether the bottom is frozen, so `cached_forward`'s output may be cached
    backbone: nn.Module  # the pretrained part: its device, and its parameters' learning-rate scale
    input_size: tuple[int, int]  # the model's own (height, width): data.image_size=null uses it
    mean: tuple[float, float, float]  # input normalisation
    std: tuple[float, float, float]
    interpolation: str  # the resize interpolation (torchvision's name)
    training: bool  # nn.Module's: the feature extraction puts it back as it was

    @property
    def spatial(self) -> bool:
        """Whether `cached_forward` gives a spatial map [batch, channels, h, w] rather than a pooled vector."""
        ...

    def cached_forward(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature cache stores for a batch of normalised images."""
        ...

    def cache_fingerprint(self) -> str:
        """Identity of `cached_forward`'s output: changes whenever the tensors that compute it change."""
        ...

    def encode(
        self, images: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedding [batch, embed_dim] and optional per-label logits [batch, labels], from images or from
        `cached_forward`'s output (`features`)."""
        ...

    def eval(self) -> Any:
        """nn.Module's: the feature extraction runs it in eval mode."""
        ...

    def train(self, mode: bool = True) -> Any:
        """nn.Module's: a frozen bottom stays in eval mode whatever `mode` is."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """nn.Module's: the feature extraction moves it to its device."""
        ...


@runtime_checkable
class CaptionEncoder(Protocol):
    """Token ids -> one text embedding per caption, trained with the model (the study's RNN encoder)."""

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Embeddings [batch, embed_dim] of padded token ids [batch, steps] with their true `lengths`."""
        ...


@runtime_checkable
class CachedTextEncoder(Protocol):
    """A pretrained text encoder whose frozen part runs on the data side, once per caption (the sentence
    encoder): `cached_input` is what the cache stores, `encode` the embedding from it."""

    dim: int  # the embedding width (the fusion network projects it to embed_dim)

    def cache_fingerprint(self) -> str:
        """Identity of `cached_input`'s output: changes whenever the tensors that compute it change."""
        ...

    def cached_input(self, captions: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """What the data side caches per caption (float16)."""
        ...

    def encode(self, cached: torch.Tensor) -> torch.Tensor:
        """Embeddings [batch, dim] from `cached_input`'s output."""
        ...

    def parameters(self, recurse: bool = True) -> Any:
        """nn.Module's: its pretrained parameters take their own learning-rate scale."""
        ...
