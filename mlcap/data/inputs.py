"""The one handoff from the model to the data: how images become its input, and its frozen parts' outputs.

`mlcap.extraction.prepare_inputs` builds a ModelInputs from the model's encoders and a set-up data module's
read-only accessors; `CaptionImageDataModule.use_inputs` takes it whole, checked against its rows, and serves
the cached tensors in place of decoded images. Plain data (tensors allowed): it knows nothing of models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mlcap.data.datasets import ImagePreprocessing

__all__ = ["ModelInputs", "split_features"]

_HOW = "build it with mlcap.extraction.prepare_inputs on this data module, after its setup()"


@dataclass(frozen=True)
class ModelInputs:
    """What the model decides about its inputs, for one set-up data module.

    `features`: per CSV ("train": its train, validation and unused rows; "predict"), the frozen image
    backbone's output [rows, views, ...] in `datamodule.images(source)` order; empty when the backbone trains
    or data.cache is off (images are then decoded). `sentences`: per split ("train", "val", "predict"), a
    frozen sentence encoder's output [captions, ...] in `datamodule.captions(split)` order.
    """

    preprocessing: ImagePreprocessing
    features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    sentences: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Own copies (plain dicts, so a data module holding them still pickles for DDP): the data module keeps
        # what it was given, not what the caller's mappings become later.
        object.__setattr__(self, "features", dict(self.features))
        object.__setattr__(self, "sentences", dict(self.sentences))

    def check(self, source_rows: Mapping[str, int], split_captions: Mapping[str, int]) -> None:
        """Raise ValueError naming the first part that does not fit the data module's rows (`source_rows`:
        rows per CSV read; `split_captions`: captions per split), so a mismatch never trains silently."""
        if not isinstance(self.preprocessing, ImagePreprocessing):
            raise ValueError(
                f"model inputs: preprocessing is {self.preprocessing!r}, not an ImagePreprocessing"
            )
        for kind, given, expected, unit in (
            ("image features", self.features, source_rows, "rows"),
            ("sentence states", self.sentences, split_captions, "captions"),
        ):
            for name, tensor in given.items():
                if name not in expected:
                    raise ValueError(
                        f"model inputs: {kind} for {name!r}, which the data module has not read "
                        f"(it has {', '.join(expected) or 'nothing'}); {_HOW}"
                    )
                if not isinstance(tensor, torch.Tensor) or tensor.ndim < 1 or len(tensor) != expected[name]:
                    is_rows = isinstance(tensor, torch.Tensor) and tensor.ndim
                    found = f"{len(tensor)} {unit}" if is_rows else f"a {type(tensor).__name__}"
                    raise ValueError(
                        f"model inputs: {kind} for {name!r} hold {found}, but the data module's {name!r} has "
                        f"{expected[name]} {unit}; {_HOW}"
                    )


def split_features(
    inputs: ModelInputs, parts: Mapping[str, Sequence[tuple[str, int]]], split_captions: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """`inputs` checked against a set-up data module's rows, its features cut per split. `parts`: per CSV
    read, its splits with their row counts in `images(source)` order; `split_captions`: captions per split."""
    if not isinstance(inputs, ModelInputs):
        raise TypeError(f"model inputs: expected a ModelInputs, got a {type(inputs).__name__}; {_HOW}")
    if not parts:
        raise ValueError("model inputs: the data module is not set up; call its setup() before use_inputs()")
    inputs.check({source: sum(rows for _, rows in p) for source, p in parts.items()}, split_captions)
    features: dict[str, torch.Tensor] = {}
    for source, tensor in inputs.features.items():
        offset = 0
        for split, rows in parts[source]:
            features[split] = tensor[offset : offset + rows]
            offset += rows
    return features
