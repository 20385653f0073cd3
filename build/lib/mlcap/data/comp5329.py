"""Reader and pre-flight checks for the COMP5329 caption CSVs (``train.csv`` / ``test.csv``).

The published files are *not* valid CSV: captions are wrapped in double quotes but contain unescaped inner
quotes (sometimes with commas inside), span several physical lines (blank lines included) and contain
slashes.  No CSV dialect describes them: pandas/csv either merge rows, split captions at inner quotes,
eat characters with ``escapechar`` tricks, or drop rows with ``on_bad_lines``.  The record structure is
nevertheless unambiguous line by line, so this module parses it by hand:

* a record starts at a physical line ``<ImageID>.jpg,`` followed by (train) ``<labels>,"`` where labels are
  space-separated integers, or (test) directly ``"``;
* every following line that does not start a record belongs to the open record, unless it *looks* like a
  record start (``<field>,"`` or ``<field>,<digits>,"``) with an ImageID that is not ``<name>.jpg``: that is
  an error, since gluing it onto the previous caption would silently lose a row;
* the caption is everything between the first ``"`` after that prefix and the *last* ``"`` of the record,
  kept exactly as written (inner quotes, commas, slashes and newlines).

Anything that does not fit raises :class:`DataFormatError` naming the file, the line and the fix.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

__all__ = ["DataFormatError", "check_images", "check_labels", "probe_images", "read_captions_csv"]

TRAIN_HEADER = "ImageID,Labels,Caption"
TEST_HEADER = "ImageID,Caption"

# Permissive on purpose: anything that looks like "<name>.jpg," starts a record, and the ImageID is then
# validated, so a malformed ID raises instead of being silently glued onto the previous caption.
_RECORD_START = re.compile(r'^(?P<image_id>[^",]+\.jpg),', re.IGNORECASE)
# A line that could begin a record: one field without spaces (quoted or not), a comma, optionally a field of
# digits and spaces and a comma, then the caption's opening quote. None of the sample's caption continuation
# lines looks like this; a caption line that did would be reported, never guessed at.
_LOOKS_LIKE_RECORD = re.compile(r'^\s*(?P<field>"?[^\s",]+"?)\s*,(?:[0-9\s]*,)?\s*"')
# A line whose first token is an image-like file name or a quoted number, whatever separator follows (a tab,
# a space, an unquoted caption): a row written otherwise, never a caption's continuation in the published
# files. Reported rather than glued onto the previous caption.
_ID_LIKE = re.compile(
    r'^\s*"?[^\s",]*\d[^\s",]*\.(?:jpe?g|png|gif|bmp|webp)\b|^\s*"\d+\s*[,.]', re.IGNORECASE
)
_LABEL_TOKEN = re.compile(r"[0-9]+")
_MAX_SHOWN = 5
_MAX_LISTED = 100

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """Input data that cannot be used as is; the message names the file, the line and what to fix."""


def check_regular_file(path: Path, key: str) -> Path:
    """`path` if it is a regular file; a FIFO, device or folder is refused before it is opened (reading a FIFO
    waits for a writer forever, a device never ends)."""
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise DataFormatError(f"{key}={path} is not allowed: it is {kind}; give the path of a file")
    return path


@dataclass
class _Record:
    image_id: str
    line: int  # 1-based physical line where the record starts
    labels: list[int] | None
    lines: list[str] = field(default_factory=list)  # caption text after the opening quote, per line
    last_line: int = 0


def _where(path: Path | str, line: int) -> str:
    return f"{path}, line {line}"


def _check_hidden_rows(raw: str, path: Path, lineno: int) -> None:
    """A lone carriage return followed by what looks like a row would hide that row inside a caption."""
    for segment in raw.split("\r")[1:]:
        if _RECORD_START.match(segment) or _ID_LIKE.match(segment):
            raise DataFormatError(
                f"{_where(path, lineno)}: a lone carriage return (\\r) comes before {segment[:40]!r}, which looks "
                "like a row of its own. Rows must be separated by newlines (\\n or \\r\\n); convert the file's "
                "line endings (e.g. `sed -i 's/\\r/\\n/g'`) and check that row."
            )


def _read_lines(path: Path) -> list[str]:
    """Split on '\\n' only, so a lone '\\r' inside a caption stays; drop one trailing '\\r' per line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{_where(path, line)}: not valid UTF-8 ({exc.reason} at byte {exc.start}). "
            "Re-save the file as UTF-8."
        ) from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline terminates the last line, it is not an empty extra line
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _expected(has_labels: bool) -> str:
    return '<ImageID>.jpg,<labels>,"<caption>"' if has_labels else '<ImageID>.jpg,"<caption>"'


def _parse_labels(text: str, path: Path, line: int) -> list[int]:
    if not text.strip():
        raise DataFormatError(
            f"{_where(path, line)}: empty Labels field. Every training row needs at least one label id, "
            'written as space-separated integers, e.g. `12.jpg,1 19,"caption"`.'
        )
    tokens = text.split()
    bad = [t for t in tokens if not _LABEL_TOKEN.fullmatch(t)]
    if bad:
        raise DataFormatError(
            f"{_where(path, line)}: non-integer label(s) {bad!r} in Labels field {text!r}. "
            "Labels must be space-separated non-negative integers."
        )
    return [int(t) for t in tokens]


def _start_record(match: re.Match[str], raw: str, path: Path, line: int, has_labels: bool) -> _Record:
    image_id = match["image_id"]
    if re.search(r"[\s/\\]", image_id):
        raise DataFormatError(
            f"{_where(path, line)}: ImageID {image_id!r} must be a bare file name without whitespace or "
            "path separators. Fix the ImageID column."
        )
    rest = raw[match.end() :]
    labels: list[int] | None = None
    if has_labels:
        comma = rest.find(",")
        if rest.startswith('"') or comma < 0 or '"' in rest[:comma]:
            raise DataFormatError(
                f'{_where(path, line)}: expected `<ImageID>,<labels>,"<caption>"` but the Labels field '
                f'is missing or malformed. Write the labels as space-separated integers, e.g. `1 19,"...`.'
            )
        labels = _parse_labels(rest[:comma], path, line)
        rest = rest[comma + 1 :]
    if not rest.startswith('"'):
        raise DataFormatError(
            f"{_where(path, line)}: the caption must start with a double quote (expected `{_expected(has_labels)}`, "
            f"got {raw[:60]!r}). Wrap the caption in double quotes."
        )
    return _Record(image_id=image_id, line=line, labels=labels, lines=[rest[1:]], last_line=line)


def _finish_record(rec: _Record, path: Path) -> str:
    # Completely empty physical lines after the closing quote (e.g. extra newlines at the end of the file)
    # carry no data; blank lines *inside* a caption are kept because the closing quote comes after them.
    lines = list(rec.lines)
    last = rec.last_line
    while len(lines) > 1 and lines[-1] == "":
        lines.pop()
        last -= 1
    body = "\n".join(lines)
    if not body.endswith('"'):
        span = f"line {rec.line}" if last == rec.line else f"lines {rec.line}-{last}"
        raise DataFormatError(
            f"{_where(path, rec.line)}: the record for {rec.image_id} ({span}) does not end with a double "
            'quote. Close the caption with `"`, and check that the next row starts with `<ImageID>.jpg,` '
            "at the beginning of a line."
        )
    return body[:-1]


def read_captions_csv(path: str | Path) -> pd.DataFrame:
    """Read a COMP5329 ``train.csv``/``test.csv`` exactly, without losing or merging any row.

    Returns columns ``image_id``, ``labels`` (list of ints, only for files with a Labels column), ``caption``
    and ``line`` (1-based physical line of the record start), in file order.
    """
    path = Path(path)
    lines = _read_lines(path)
    has_labels = _has_labels_column(lines, path)
    records = _parse_records(lines, path, has_labels)
    df = _records_frame(records, has_labels)
    _warn_empty_captions(df, path)
    return df


def _has_labels_column(lines: Sequence[str], path: Path) -> bool:
    """Whether the header is the training layout; any other header is refused rather than guessed at."""
    header = lines[0] if lines else ""
    if header not in (TRAIN_HEADER, TEST_HEADER):
        raise DataFormatError(
            f"{_where(path, 1)}: unexpected header {header[:80]!r}. Expected {TRAIN_HEADER!r} "
            f"(training file) or {TEST_HEADER!r} (test file)."
        )
    return header == TRAIN_HEADER


def _parse_records(lines: Sequence[str], path: Path, has_labels: bool) -> list[tuple[_Record, str]]:
    """Group the lines after the header into (record, caption), in file order, refusing what is ambiguous."""
    records: list[tuple[_Record, str]] = []
    seen: dict[str, int] = {}
    current: _Record | None = None
    for lineno, raw in enumerate(lines[1:], start=2):
        _check_hidden_rows(raw, path, lineno)
        match = _RECORD_START.match(raw)
        if match:
            if current is not None:
                # Records are closed as soon as the next one starts, so errors come out in file order.
                records.append((current, _finish_record(current, path)))
            current = _start_record(match, raw, path, lineno, has_labels)
            _check_unique(current, seen, path)
        elif looks_like := _LOOKS_LIKE_RECORD.match(raw) or _ID_LIKE.match(raw):
            raise _bad_record_start(looks_like, raw, path, lineno, has_labels)
        elif current is None:
            raise DataFormatError(
                f"{_where(path, lineno)}: line {raw[:60]!r} comes before the first record and is not the "
                "header. Remove it; rows must start with `<ImageID>.jpg,`."
            )
        else:
            current.lines.append(raw)
            current.last_line = lineno
    if current is not None:
        records.append((current, _finish_record(current, path)))
    return records


def _check_unique(rec: _Record, seen: dict[str, int], path: Path) -> None:
    """Refuse a second row for an image (recording the first in `seen`): which one to keep is not ours to guess."""
    first = seen.setdefault(rec.image_id, rec.line)
    if first != rec.line:
        raise DataFormatError(
            f"{_where(path, rec.line)}: duplicate ImageID {rec.image_id} (first seen at line "
            f"{first}). Each image must appear once; remove or merge the duplicate row."
        )


def _bad_record_start(
    looks_like: re.Match[str], raw: str, path: Path, line: int, has_labels: bool
) -> DataFormatError:
    """The error for a line that starts like a row without a `<name>.jpg` ImageID, so no row is glued on."""
    return DataFormatError(
        f"{_where(path, line)}: this line looks like the start of a row, but its ImageID "
        f"{(looks_like.groupdict().get('field') or looks_like.group()).strip()} is not a `<name>.jpg` file "
        "name followed by a comma (expected "
        f"`{_expected(has_labels)}`, got {raw[:60]!r}). Fix the ImageID (unquoted, e.g. `16.jpg`); "
        "if the line belongs to the previous row's caption, rewrap it so it does not start like a row."
    )


def _records_frame(records: Sequence[tuple[_Record, str]], has_labels: bool) -> pd.DataFrame:
    """The parsed records as the DataFrame callers get, with fixed dtypes even when the file has no rows."""
    rows: dict[str, list] = {
        "image_id": [rec.image_id for rec, _ in records],
        "labels": [rec.labels for rec, _ in records],
        "caption": [caption for _, caption in records],
        "line": [rec.line for rec, _ in records],
    }
    columns = ["image_id", "labels", "caption", "line"] if has_labels else ["image_id", "caption", "line"]
    df = pd.DataFrame({c: rows[c] for c in columns}, columns=columns)
    df["line"] = df["line"].astype("int64")
    df["image_id"] = df["image_id"].astype(object)
    df["caption"] = df["caption"].astype(object)
    return df


def _warn_empty_captions(df: pd.DataFrame, path: Path) -> None:
    """Empty captions are legal (the image still predicts), but say how many so none goes unnoticed."""
    empty = [pos for pos, caption in enumerate(df["caption"]) if not caption.strip()]
    if empty:
        log.warning(
            "%s: %d row(s) with an empty caption, kept (the caption side sees an unknown token): %s",
            path,
            len(empty),
            _row_refs(df, empty),
        )


def _row_refs(df: pd.DataFrame, positions: Sequence[int]) -> str:
    """Describe rows as 'line N (id)' so the user can find them in the CSV (row index if no line column)."""
    shown = []
    for pos in positions[:_MAX_SHOWN]:
        row = df.iloc[pos]
        where = f"line {int(row['line'])}" if "line" in df.columns else f"row {pos}"
        shown.append(f"{where} ({row['image_id']})")
    more = len(positions) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_labels(df: pd.DataFrame, label_ids: Sequence[int], source: str | Path) -> None:
    """Fail before training if any row uses a label id the model has no output for."""
    if "labels" not in df.columns:
        raise DataFormatError(f"{source}: has no Labels column, so its labels cannot be checked.")
    allowed = sorted({int(i) for i in label_ids})
    allowed_set = set(allowed)
    bad_positions: list[int] = []
    bad_ids: set[int] = set()
    for pos, labels in enumerate(df["labels"]):
        wrong = {int(label) for label in labels} - allowed_set
        if wrong:
            bad_positions.append(pos)
            bad_ids |= wrong
    if bad_positions:
        raise DataFormatError(
            f"{source}: {len(bad_positions)} row(s) use label id(s) {sorted(bad_ids)} that are not allowed: "
            f"{_row_refs(df, bad_positions)}. Allowed ids: {allowed}. Fix those rows or the configured "
            "label ids."
        )


def _probe_image(path: str) -> str | None:
    """Return why ``path`` is unusable, or None.

    The image is decoded, not just its header parsed, so a truncated or garbled JPEG is found here and not
    mid-extraction; PIL's draft mode decodes JPEGs at 1/8 scale (all the entropy-coded data is still read,
    which is what catches the damage), about 0.3 ms an image here.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot stat: {exc}"
    if size == 0:
        return "empty file"
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))
            img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises, the image cannot be used
        kind = "not a readable image" if isinstance(exc, UnidentifiedImageError) else "cannot be decoded"
        return f"{kind}: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return None


def probe_images(paths: Sequence[str], workers: int | None = None) -> list[str | None]:
    """`_probe_image` for every path, in order, in threads (PIL releases the GIL while decoding)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_probe_image, paths, chunksize=64))


def check_images(
    df: pd.DataFrame, image_dir: str | Path, source: str | Path, workers: int | None = None
) -> None:
    """Fail before training (not hours into it) on missing or undecodable images, reporting all at once."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"Image directory {image_dir} (for {source}) does not exist or is not a directory. "
            "Point the data root at the folder that contains data/<ImageID>."
        )
    problems = probe_images([os.path.join(image_dir, image_id) for image_id in df["image_id"]], workers)
    missing: list[int] = []
    unreadable: list[tuple[int, str]] = []
    for pos, problem in enumerate(problems):
        if problem == "missing":
            missing.append(pos)
        elif problem is not None:
            unreadable.append((pos, problem))

    unreadable_msg = ""
    if unreadable:
        # Every damaged file is listed (up to a sanity cap), each with its line, so one run finds them all.
        details = "; ".join(f"{_row_refs(df, [pos])}: {why}" for pos, why in unreadable[:_MAX_LISTED])
        more = len(unreadable) - _MAX_LISTED
        unreadable_msg = (
            f"{len(unreadable)} image(s) in {image_dir} listed in {source} cannot be decoded: {details}"
            f"{f' and {more} more' if more > 0 else ''}. Replace those files (or remove their rows) and run again."
        )
    if missing:
        msg = (
            f"{len(missing)} image(s) listed in {source} are missing from {image_dir}: "
            f"{_row_refs(df, missing)}. Copy the images into {image_dir} or fix the ImageID column."
        )
        raise FileNotFoundError(msg + (" Also: " + unreadable_msg if unreadable_msg else ""))
    if unreadable:
        raise DataFormatError(unreadable_msg)


class Comp5329Reader:
    """The COMP5329 files as rows (`mlcap.data.reader.CaptionReader`): the strict reader above, label ids as
    names ("1".."19", so submissions keep the ids byte for byte), one caption a row; `demo` generates the
    built-in demo set (in this format) under `root` on first use."""

    def __init__(
        self,
        root: str,
        labels: Sequence[int],
        train_csv: str = "train.csv",
        predict_csv: str = "test.csv",
        image_dir: str = "data",
        demo: dict | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.labels = [int(label) for label in labels]
        self.files = {"train": train_csv, "predict": predict_csv}
        self.image_dir = self.root / image_dir
        self.demo = dict(demo) if demo else None

    def prepare(self) -> None:
        if self.demo is not None:
            from mlcap.data.demo import ensure_demo

            ensure_demo(self.root, **self.demo)

    def describe(self, split: str) -> str:
        path = Path(self.files[split]).expanduser()
        return str(path if path.is_absolute() else self.root / path)

    def read(self, split: str) -> pd.DataFrame:
        path = Path(self.describe(split))
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist (set data.root to the folder holding train.csv, test.csv and data/)"
            )
        check_regular_file(path, "data.train_csv" if split == "train" else "data.predict_csv")
        table = read_captions_csv(path)
        if split == "train":
            if "labels" not in table:
                raise DataFormatError(f"{path} has no Labels column; training needs labelled rows")
            check_labels(table, self.labels, path)
            table["labels"] = [[str(label) for label in row] for row in table["labels"]]
        table["captions"] = [[caption] for caption in table["caption"]]
        table["path"] = [self.image_dir / image_id for image_id in table["image_id"]]
        table["source"] = [_where(path, line) for line in table["line"]]
        return table

    def label_names(self, train: pd.DataFrame) -> list[str]:
        return [str(label) for label in self.labels]
