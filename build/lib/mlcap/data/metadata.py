"""What a checkpoint needs to turn new rows into the inputs its model was trained on.

Stored in the checkpoint as a plain dict (no class paths), so renaming or moving a data class never breaks a
saved model. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LAYOUT = 2  # bumped when a field changes meaning (2: label names, the data node, eval_captions)


@dataclass(frozen=True)
class DataMetadata:
    """Label names, vocabulary and the preprocessing settings of the training data."""

    label_names: tuple[str, ...]  # the model's outputs, as the data names them (COMP5329: "1" ... "19")
    vocabulary: tuple[str, ...]  # token of each word id (0: padding, 1: unknown)
    max_len: int  # tokens kept per caption
    image_size: tuple[int, int] | None  # (height, width) the images were resized to; None: the encoder's own
    cache_views: int  # cached flip views per image (test-time augmentation averages them)
    eval_captions: str  # all | first: how an image's several captions are scored
    # The training data node (plain values; the reader node and its keys): predict.py's default data.
    data: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    layout: int = LAYOUT

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataMetadata:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - {"layout"} - set(values))
        if missing or values.get("layout", LAYOUT) != LAYOUT:
            raise ValueError(
                f"the data metadata lacks {missing or 'nothing'} (layout {values.get('layout')}, this mlcap reads "
                f"{LAYOUT}); the checkpoint comes from another mlcap version: retrain it with this one"
            )
        size = values["image_size"]
        return cls(
            label_names=tuple(str(x) for x in values["label_names"]),
            vocabulary=tuple(str(x) for x in values["vocabulary"]),
            max_len=int(values["max_len"]),
            image_size=None if size is None else (int(size[0]), int(size[1])),
            cache_views=int(values["cache_views"]),
            eval_captions=str(values["eval_captions"]),
            data=dict(values["data"]),
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
