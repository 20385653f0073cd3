"""The reader contract: a data set's files -> rows (image path, captions, label names). Torch-free.

A new format is one reader class (a module under mlcap/data/) and one YAML under conf/data/ whose `reader`
node builds it from the `data.*` keys; the data module, training, prediction and `mlcap.eda` take it from the
config (`_target_`) and need no change. Readers report bad input as `DataFormatError` naming the file and the
line (or the id) before any image is decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import pandas as pd

from mlcap.data.comp5329 import DataFormatError, check_regular_file, probe_images

log = logging.getLogger(__name__)

Split = Literal["train", "predict"]
# The columns of a reader's rows: `image_id` is what submission.csv writes, `path` the image file, `captions` a
# non-empty list of strings, `labels` a list of label names (train; predict only when the file has labels),
# `source` where the row comes from ("<file>, line 7", "<file>, image id 391895") for error messages.
ROW_COLUMNS = ("image_id", "path", "captions", "labels", "source")
_SHOWN = 5


@runtime_checkable
class CaptionReader(Protocol):
    """What the data module needs from a data set's files; nothing of torch."""

    def prepare(self) -> None:
        """Make the files exist (the demo reader generates them on first use); most readers do nothing."""

    def read(self, split: Split) -> pd.DataFrame:
        """The rows of the training ("train", labelled) or prediction ("predict") file, in file order, with
        the columns of ROW_COLUMNS (`labels` absent when a prediction file has none); checked strictly."""

    def label_names(self, train: pd.DataFrame) -> list[str]:
        """The model's outputs, in order: the configured labels, else what the format defines (COCO's
        categories), else the sorted set of labels in the training rows."""

    def describe(self, split: Split) -> str:
        """The file(s) a split is read from, for messages and logs."""


def resolve(root: str | Path, name: str | Path) -> Path:
    """`name` under `root`, unless absolute."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(root).expanduser() / path


def existing(root: str | Path, name: str | Path, key: str) -> Path:
    """The file `name` (relative to root), or FileNotFoundError naming the key to set (DataFormatError for a
    FIFO, device or folder)."""
    path = check_regular_file(resolve(root, name), key)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; set {key} (relative to data.root, or absolute)")
    return path


def configured_or_seen(labels: Sequence[object] | None, train: pd.DataFrame) -> list[str]:
    """`data.labels` as given, else the sorted set of label names in the training rows."""
    if labels is not None:
        names = [str(label) for label in labels]
        if len(set(names)) != len(names) or not names:
            raise DataFormatError(f"data.labels={names} must list each label once (and at least one)")
        return names
    return sorted({label for row in train["labels"] for label in row})


def rows_frame(rows: Iterable[dict], labelled: bool) -> pd.DataFrame:
    """Row dicts as the reader's DataFrame, with fixed columns even when there are none."""
    columns = [c for c in ROW_COLUMNS if labelled or c != "labels"]
    return pd.DataFrame(list(rows), columns=columns)


def check_unique(table: pd.DataFrame, path: Path, what: str = "image") -> None:
    """Refuse a second row of the same image, naming both rows: which one to keep is not ours to guess."""
    first: dict[str, str] = {}
    for image_id, source in zip(table["image_id"], table["source"], strict=True):
        if image_id in first:
            raise DataFormatError(
                f"{source}: duplicate {what} {image_id!r} (first at {first[image_id].removeprefix(f'{path}, ')}). "
                "Each image must appear once; merge its captions and labels into one row."
            )
        first[image_id] = source


def check_known_labels(table: pd.DataFrame, names: Sequence[str]) -> None:
    """Every label of every row is one of the model's outputs, or an error naming the rows."""
    known = set(names)
    bad = [(src, sorted(set(row) - known)) for src, row in zip(table["source"], table["labels"], strict=True)]
    bad = [(src, unknown) for src, unknown in bad if unknown]
    if bad:
        shown = "; ".join(f"{src}: {unknown}" for src, unknown in bad[:_SHOWN])
        more = f" and {len(bad) - _SHOWN} more rows" if len(bad) > _SHOWN else ""
        raise DataFormatError(
            f"{len(bad)} row(s) use labels the model has no output for: {shown}{more}. Known labels: "
            f"{list(names)}. Fix those rows or list every label in data.labels."
        )


def check_image_files(table: pd.DataFrame, describe: str) -> None:
    """Decode-check every image of the rows (all at once, one error naming each row) before any work."""
    problems = probe_images([str(p) for p in table["path"]])
    rows = zip(table["source"], table["image_id"], table["path"], problems, strict=True)
    bad = [(f"{src} ({image_id}): {path}", why) for src, image_id, path, why in rows if why]
    if not bad:
        return
    shown = "; ".join(f"{where}: {why}" for where, why in bad[:_SHOWN])
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    message = (
        f"{len(bad)} image(s) listed in {describe} are missing or unreadable: {shown}{more}. Copy or replace "
        "those files (data.image_dir) or remove their rows, and run again."
    )
    if any(why == "missing" for _, why in bad):
        raise FileNotFoundError(message)
    raise DataFormatError(message)


def warn_unlabelled(count: int, total: int, path: Path) -> None:
    """Rows without any label are kept (they teach the model what is absent), but said once, counted."""
    if count:
        log.warning("%s: %d of %d image(s) have no label; kept, with an all-zero target", path, count, total)
