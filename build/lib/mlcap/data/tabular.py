"""Readers for any CSV with a header (`data=csv`) and for JSON Lines (`data=jsonl`): one image a row.

Both read the fields `data.columns.image` (a file name under `data.image_dir`), `data.columns.caption` (CSV:
one caption; JSON Lines: a string or a list of strings) and `data.columns.labels` (CSV: names joined by
`data.label_sep`; JSON Lines: a list of names, or one string joined the same way). A prediction file may lack
the labels. Parsing is strict: a malformed row is an error naming the file and line, never a dropped row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcap.data.comp5329 import DataFormatError
from mlcap.data.reader import (
    Split,
    check_unique,
    configured_or_seen,
    existing,
    resolve,
    rows_frame,
    warn_unlabelled,
)


class _OneImageARow:
    """What the CSV and JSON Lines readers share: files, columns, labels and the checks on rows."""

    kind = ""

    def __init__(
        self,
        root: str,
        train_file: str,
        predict_file: str,
        image_dir: str,
        columns: Mapping[str, str],
        label_sep: str = " ",
        labels: Sequence[object] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.files = {"train": train_file, "predict": predict_file}
        self.image_dir = resolve(self.root, image_dir)
        missing = {"image", "caption", "labels"} - set(columns)
        if missing:
            raise DataFormatError(
                f"data.columns lacks {sorted(missing)}: name the image, caption and labels fields"
            )
        self.columns = dict(columns)
        if not label_sep:
            raise DataFormatError(
                "data.label_sep='' is not allowed: give the text between two labels (e.g. ' ')"
            )
        self.label_sep = label_sep
        self.labels = list(labels) if labels is not None else None

    def prepare(self) -> None:
        """The files are the user's: nothing to make."""

    def describe(self, split: Split) -> str:
        return str(resolve(self.root, self.files[split]))

    def label_names(self, train: pd.DataFrame) -> list[str]:
        return configured_or_seen(self.labels, train)

    def _records(self, path: Path) -> Iterator[tuple[int, Mapping[str, Any], bool]]:
        """(line, fields, whether the file has the labels field) per row."""
        raise NotImplementedError

    def read(self, split: Split) -> pd.DataFrame:
        key = "data.train_file" if split == "train" else "data.predict_file"
        path = existing(self.root, self.files[split], key)
        rows, labelled = [], split == "train"
        for line, fields, has_labels in self._records(path):
            labelled = has_labels
            where = f"{path}, line {line}"
            if split == "train" and not has_labels:
                raise DataFormatError(
                    f"{path}, line 1: no field {self.columns['labels']!r} (data.columns.labels); training needs labels"
                )
            image = fields[self.columns["image"]]
            if not isinstance(image, str) or not image.strip():
                raise DataFormatError(f"{where}: field {self.columns['image']!r} must be an image file name")
            row = {
                "image_id": image,
                "path": self.image_dir / image,
                "captions": self._captions(fields[self.columns["caption"]], where),
                "source": where,
            }
            if has_labels:
                row["labels"] = self._labels(fields[self.columns["labels"]], where)
            rows.append(row)
        table = rows_frame(rows, labelled)
        check_unique(table, path)
        if labelled:
            warn_unlabelled(sum(not row for row in table["labels"]), len(table), path)
        return table

    def _captions(self, value: Any, where: str) -> list[str]:
        captions = [value] if isinstance(value, str) else value
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise DataFormatError(
                f"{where}: field {self.columns['caption']!r} must be a caption (a string) or a non-empty list of "
                f"strings, got {value!r}"
            )
        return captions

    def _labels(self, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            parts = value.split() if self.label_sep == " " else value.split(self.label_sep)
            names = [part.strip() for part in parts]
        elif isinstance(value, list) and all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in value
        ):
            names = [str(v).strip() for v in value]
        else:
            raise DataFormatError(
                f"{where}: field {self.columns['labels']!r} must hold label names, got {value!r}"
            )
        if any(not name for name in names):
            raise DataFormatError(
                f"{where}: an empty label in {value!r} (data.label_sep={self.label_sep!r}); remove the extra separator"
            )
        return list(dict.fromkeys(names))


class CsvReader(_OneImageARow):
    """Any CSV with a header row (standard quoting, read by Python's csv module in strict mode)."""

    kind = "csv"

    def _records(self, path: Path) -> Iterator[tuple[int, Mapping[str, Any], bool]]:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            try:
                header = next(reader, None)
                if header is None:
                    raise DataFormatError(f"{path}, line 1: empty file; a CSV with a header row is expected")
                has_labels = self._check_header(header, path)
                start = reader.line_num + 1
                for values in reader:
                    if len(values) != len(header):
                        raise DataFormatError(
                            f"{path}, line {start}: {len(values)} fields where the header has {len(header)}; "
                            "quote fields that hold commas (standard CSV) and check that row"
                        )
                    yield start, dict(zip(header, values, strict=True)), has_labels
                    start = reader.line_num + 1
            except csv.Error as err:
                raise DataFormatError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
            except UnicodeDecodeError as err:
                raise DataFormatError(
                    f"{path}: not valid UTF-8 ({err.reason}); re-save it as UTF-8"
                ) from None

    def _check_header(self, header: list[str], path: Path) -> bool:
        for key in ("image", "caption"):
            if self.columns[key] not in header:
                raise DataFormatError(
                    f"{path}, line 1: no column {self.columns[key]!r} (data.columns.{key}); the header is "
                    f"{header}: set data.columns.{key} to one of them"
                )
        if len(set(header)) != len(header):
            raise DataFormatError(f"{path}, line 1: a column name appears twice in the header {header}")
        return self.columns["labels"] in header


class JsonlReader(_OneImageARow):
    """JSON Lines: one JSON object a line (blank lines are allowed and skipped)."""

    kind = "jsonl"

    def _records(self, path: Path) -> Iterator[tuple[int, Mapping[str, Any], bool]]:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{path}: not valid UTF-8 ({err.reason}); re-save it as UTF-8") from None
        has_labels: bool | None = None
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                fields = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    f"{path}, line {line}: not valid JSON ({err.msg}, column {err.colno})"
                ) from None
            if not isinstance(fields, dict):
                raise DataFormatError(
                    f"{path}, line {line}: a JSON object is expected, got {type(fields).__name__}"
                )
            for key in ("image", "caption"):
                if self.columns[key] not in fields:
                    raise DataFormatError(
                        f"{path}, line {line}: no field {self.columns[key]!r} (data.columns.{key}); the object has "
                        f"{sorted(fields)}"
                    )
            labelled = self.columns["labels"] in fields
            if has_labels is not None and labelled != has_labels:
                raise DataFormatError(
                    f"{path}, line {line}: field {self.columns['labels']!r} is "
                    f"{'present' if labelled else 'missing'} here but not in the rows before; give it in every row"
                )
            has_labels = labelled
            yield line, fields, labelled
