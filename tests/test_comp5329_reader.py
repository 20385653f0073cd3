"""Tests for the hand-written COMP5329 CSV reader and the pre-flight label/image checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from mlcap.data.comp5329 import DataFormatError, check_images, check_labels, read_captions_csv

LABEL_IDS = [i for i in range(1, 20) if i != 12]
TRAIN_HEADER = "ImageID,Labels,Caption\n"
TEST_HEADER = "ImageID,Caption\n"


def write(tmp_path: Path, text: str, name: str = "train.csv", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def assert_names(exc: pytest.ExceptionInfo[BaseException], path: Path, line: int) -> None:
    msg = str(exc.value)
    assert str(path) in msg
    assert re.search(rf"\bline {line}\b", msg), msg


# --------------------------------------------------------------------------- parsing quirks


def test_inner_quotes_with_commas_and_slashes_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        TRAIN_HEADER + '9084.jpg,3 1 11,"A street sign labeled "Seltzer Way," with a hydrant."\n'
        '448.jpg,1,"Two children on boogie/body boards, 1/64 scale, in the room/"\n'
        '7.jpg,2,"Sign reading "eating animals.""\n',
    )
    df = read_captions_csv(path)
    assert list(df.columns) == ["image_id", "labels", "caption", "line"]
    assert list(df.index) == [0, 1, 2]
    assert df.image_id.tolist() == ["9084.jpg", "448.jpg", "7.jpg"]
    assert df.labels.tolist() == [[3, 1, 11], [1], [2]]
    assert df.caption.tolist() == [
        'A street sign labeled "Seltzer Way," with a hydrant.',
        "Two children on boogie/body boards, 1/64 scale, in the room/",
        'Sign reading "eating animals."',
    ]
    assert df.line.tolist() == [2, 3, 4]


def test_multiline_caption_with_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        TRAIN_HEADER + '1.jpg,1 2,"A couple of men w\n\n\n\nA couple of men with a neon light."\n'
        '2.jpg,18,"Atop a rug\nfull of jeans."\n'
        '3.jpg,1 3,"Men loading a van.\n."\n'
        '4.jpg,4,"last"\n',
    )
    df = read_captions_csv(path)
    assert df.caption.tolist() == [
        "A couple of men w\n\n\n\nA couple of men with a neon light.",
        "Atop a rug\nfull of jeans.",
        "Men loading a van.\n.",
        "last",
    ]
    assert df.line.tolist() == [2, 7, 9, 11]
    assert df.labels.tolist() == [[1, 2], [18], [1, 3], [4]]


def test_continuation_lines_with_digits_commas_and_quotes_stay_in_the_caption(tmp_path: Path) -> None:
    """The "looks like a row" rule (issue 12) must not fire on ordinary caption lines."""
    caption = 'A rally of\n2,000 people, "quoted", 3 4\n"Seltzer Way," 16 signs\n12 buses, 3,4 "x"\n, "end"'
    path = write(tmp_path, TRAIN_HEADER + f'1.jpg,1,"{caption}"\n2.jpg,2,"b"\n')
    df = read_captions_csv(path)
    assert df.caption.tolist() == [caption, "b"]
    assert df.line.tolist() == [2, 7]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_crlf_bom_and_trailing_newline(tmp_path: Path, trailing_newline: bool) -> None:
    text = TRAIN_HEADER + '1.jpg,1,"first\nsecond"\n2.jpg,2,"plain"' + ("\n" if trailing_newline else "")
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    df = read_captions_csv(path)
    assert df.caption.tolist() == ["first\nsecond", "plain"]
    assert df.line.tolist() == [2, 4]


def test_lf_without_trailing_newline(tmp_path: Path) -> None:
    df = read_captions_csv(write(tmp_path, TRAIN_HEADER + '1.jpg,1,"a"\n2.jpg,2,"b"'))
    assert df.caption.tolist() == ["a", "b"]


def test_test_layout_has_no_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        TEST_HEADER + '30023.jpg,"A sign with the name " Scott " on it."\n30027.jpg,"two\ntrains, 1/2"\n',
        name="test.csv",
    )
    df = read_captions_csv(path)
    assert list(df.columns) == ["image_id", "caption", "line"]
    assert df.caption.tolist() == ['A sign with the name " Scott " on it.', "two\ntrains, 1/2"]
    assert df.line.tolist() == [2, 3]


def test_header_only_gives_empty_frame(tmp_path: Path) -> None:
    df = read_captions_csv(write(tmp_path, TRAIN_HEADER))
    assert len(df) == 0
    assert list(df.columns) == ["image_id", "labels", "caption", "line"]


# --------------------------------------------------------------------------- format errors


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        # unterminated: the next record starts, so the first one (lines 2-3) never closed its quote
        ('1.jpg,1,"no closing quote\nstill open\n2.jpg,2,"ok"\n', 2, "does not end with a double quote"),
        ('1.jpg,1,"ok"\n2.jpg,2,"never closed\n', 3, "does not end with a double quote"),
        # errors come out in file order: the open record (line 2) before the bad labels of line 4
        ('1.jpg,1,"open\nstill\n2.jpg,,"x"\n', 2, "lines 2-3"),
        ('1.jpg,1,"ok" trailing\n', 2, "does not end with a double quote"),
        ('1.jpg,1,"ok"\n2.jpg,1 x 3,"bad label"\n', 3, "non-integer"),
        ('1.jpg,1,"ok"\n2.jpg,-1,"negative"\n', 3, "non-integer"),
        ('1.jpg,,"empty labels"\n', 2, "empty Labels"),
        ('1.jpg," ","blank labels"\n', 2, "Labels field"),
        ('1.jpg,"no labels at all"\n', 2, "Labels field"),
        ("1.jpg,1,no quotes\n", 2, "must start with a double quote"),
        ('1.jpg,1,"a"\n2.jpg,2,"b"\n1.jpg,3,"c"\n', 4, "duplicate ImageID 1.jpg (first seen at line 2)"),
        ('sub/1.jpg,1,"a"\n', 2, "bare file name"),
        # a row whose ImageID is not <name>.jpg is an error, not glued onto the previous caption (issue 12)
        ('1.jpg,1,"a"\n16.png,1,"b"\n', 3, "is not a `<name>.jpg` file name"),
        ('1.jpg,1,"a"\n16, 1 2 ,"b"\n', 3, "is not a `<name>.jpg` file name"),
        ('stray text\n1.jpg,1,"a"\n', 2, "before the first record"),
        ('\n1.jpg,1,"a"\n', 2, "before the first record"),
    ],
)
def test_train_format_errors(tmp_path: Path, body: str, line: int, fragment: str) -> None:
    path = write(tmp_path, TRAIN_HEADER + body)
    with pytest.raises(DataFormatError) as exc:
        read_captions_csv(path)
    assert_names(exc, path, line)
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "header",
    ["ImageID,Caption,Labels\n", "image_id,labels,caption\n", '1.jpg,1,"no header"\n', ""],
)
def test_bad_header(tmp_path: Path, header: str) -> None:
    path = write(tmp_path, header + '2.jpg,1,"a"\n')
    with pytest.raises(DataFormatError) as exc:
        read_captions_csv(path)
    assert_names(exc, path, 1)
    assert "ImageID,Labels,Caption" in str(exc.value)


def test_test_layout_rejects_labels(tmp_path: Path) -> None:
    path = write(tmp_path, TEST_HEADER + '1.jpg,"ok"\n2.jpg,1,"labels in a test file"\n', name="test.csv")
    with pytest.raises(DataFormatError) as exc:
        read_captions_csv(path)
    assert_names(exc, path, 3)


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(TRAIN_HEADER.encode() + b'1.jpg,1,"a"\n2.jpg,1,"caf\xe9"\n')
    with pytest.raises(DataFormatError) as exc:
        read_captions_csv(path)
    assert_names(exc, path, 3)


# --------------------------------------------------------------------------- check_labels


def test_check_labels(tmp_path: Path) -> None:
    path = write(tmp_path, TRAIN_HEADER + '1.jpg,1 19,"a"\n2.jpg,12,"b"\n3.jpg,3,"c"\n4.jpg,20 1,"d"\n')
    df = read_captions_csv(path)
    check_labels(df.iloc[[0, 2]], LABEL_IDS, path)
    with pytest.raises(DataFormatError) as exc:
        check_labels(df, LABEL_IDS, path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "2 row(s)" in msg
    assert "line 3 (2.jpg)" in msg and "line 5 (4.jpg)" in msg
    assert "[12, 20]" in msg
    assert str(LABEL_IDS) in msg


def test_check_labels_truncates_long_lists(tmp_path: Path) -> None:
    rows = "".join(f'{i}.jpg,99,"x"\n' for i in range(1, 11))
    df = read_captions_csv(write(tmp_path, TRAIN_HEADER + rows))
    with pytest.raises(DataFormatError, match=r"10 row\(s\).*and 5 more"):
        check_labels(df, LABEL_IDS, "train.csv")


# --------------------------------------------------------------------------- check_images


def make_images(tmp_path: Path) -> tuple[Path, Path]:
    image_dir = tmp_path / "data"
    image_dir.mkdir()
    for name, colour in [("1.jpg", "red"), ("2.jpg", "blue"), ("3.jpg", "green")]:
        Image.new("RGB", (8, 6), colour).save(image_dir / name, format="JPEG")
    csv = write(tmp_path, TRAIN_HEADER + '1.jpg,1,"a"\n2.jpg,2,"b"\n3.jpg,3,"c"\n')
    return image_dir, csv


def test_check_images_ok(tmp_path: Path) -> None:
    image_dir, csv = make_images(tmp_path)
    check_images(read_captions_csv(csv), image_dir, csv)


def test_check_images_missing(tmp_path: Path) -> None:
    image_dir, csv = make_images(tmp_path)
    (image_dir / "2.jpg").unlink()
    (image_dir / "3.jpg").write_bytes(b"garbage, not a jpeg")
    with pytest.raises(FileNotFoundError) as exc:
        check_images(read_captions_csv(csv), image_dir, csv)
    msg = str(exc.value)
    assert str(csv) in msg and str(image_dir) in msg
    assert "1 image(s)" in msg and "line 3 (2.jpg)" in msg
    assert "3.jpg" in msg  # the unreadable one is reported too, not hidden behind the missing one


@pytest.mark.parametrize("content", [b"garbage, not a jpeg", b""])
def test_check_images_unreadable(tmp_path: Path, content: bytes) -> None:
    image_dir, csv = make_images(tmp_path)
    (image_dir / "3.jpg").write_bytes(content)
    with pytest.raises(DataFormatError) as exc:
        check_images(read_captions_csv(csv), image_dir, csv)
    msg = str(exc.value)
    assert str(csv) in msg and "line 4 (3.jpg)" in msg and "1 image(s)" in msg


def test_check_images_missing_dir(tmp_path: Path) -> None:
    _, csv = make_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_images(read_captions_csv(csv), tmp_path / "nope", csv)


# --------------------------------------------------------------------------- real sample


def test_real_train(real_sample: Path) -> None:
    path = real_sample / "train.csv"
    df = read_captions_csv(path)
    assert len(df) == 8000
    assert df.image_id.is_unique
    starts = sum(
        1 for ln in path.read_text(encoding="utf-8").splitlines() if re.match(r'^[^",]+\.jpg,[0-9 ]+,"', ln)
    )
    assert len(df) == starts
    by_id = df.set_index("image_id")
    assert by_id.caption["9084.jpg"] == (
        'A street sign labeled "Seltzer Way," with a red fire hydrant in the foreground and a street '
        "stretching into the background."
    )
    assert by_id.labels["9084.jpg"] == [3, 1, 11]
    assert "boogie/body" in by_id.caption["448.jpg"]
    assert "\n\n" in by_id.caption["24624.jpg"]
    assert by_id.caption["24624.jpg"].endswith("neon light.")
    assert by_id.labels["1014.jpg"] == [18]
    assert "\n" in by_id.caption["1014.jpg"]
    assert by_id.line["1014.jpg"] == 272
    assert by_id.line["9084.jpg"] == 2474
    check_labels(df, LABEL_IDS, path)


def test_real_test(real_sample: Path) -> None:
    path = real_sample / "test.csv"
    df = read_captions_csv(path)
    assert len(df) == 1000
    assert df.image_id.is_unique
    assert "labels" not in df.columns
    starts = sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if re.match(r'^[^",]+\.jpg,"', ln))
    assert len(df) == starts


def test_real_images(real_sample: Path) -> None:
    """Every image of the sample decodes: the pre-flight check (benchmarks/preflight.py times it) passes."""
    for name in ("train.csv", "test.csv"):
        check_images(read_captions_csv(real_sample / name), real_sample / "data", real_sample / name)
