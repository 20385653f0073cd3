"""Tests for the synthetic demo data set: COMP5329 file format, label statistics, determinism, caching and
that it rewards fusing image and caption (the reason it exists)."""

from __future__ import annotations

import re
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, tmpfs
from PIL import Image

from mlcap.data import demo, demo_scene
from mlcap.data.cache_folder import CacheFolderError
from mlcap.data.demo import DEMO_LABEL_NAMES, ensure_demo, generate_demo

N_TRAIN, N_TEST = 200, 50
TRAIN_ROW = re.compile(r'(\d+)\.jpg,(\d+(?: \d+)*),"([^"\n]+)"')
TEST_ROW = re.compile(r'(\d+)\.jpg,"([^"\n]+)"')
TEST_LABEL_ROW = re.compile(r"(\d+)\.jpg,(\d+(?: \d+)*)")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "set", n_train=N_TRAIN, n_test=N_TEST, seed=3)


def _lines(path: Path, header: str) -> list[str]:
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n"), f"{path}: want plain \\n line ends and a final newline"
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert lines[0] == header
    return lines[1:]


def _labels(text: str) -> list[int]:
    return [int(v) for v in text.split()]


def test_label_names_cover_the_configured_label_ids() -> None:
    """One name per label id the data config lists (the ids a model trained on the demo predicts), no more."""
    assert sorted(DEMO_LABEL_NAMES) == list(compose_config("train").data.label_ids)
    assert all(isinstance(name, str) and name for name in DEMO_LABEL_NAMES.values())


def test_csv_format_matches_comp5329(small_demo: Path) -> None:
    train = [TRAIN_ROW.fullmatch(line) for line in _lines(small_demo / "train.csv", "ImageID,Labels,Caption")]
    test = [TEST_ROW.fullmatch(line) for line in _lines(small_demo / "test.csv", "ImageID,Caption")]
    test_labels = [
        TEST_LABEL_ROW.fullmatch(line) for line in _lines(small_demo / "test_labels.csv", "ImageID,Labels")
    ]
    assert all(train) and all(test) and all(test_labels)
    assert [int(m[1]) for m in train] == list(range(N_TRAIN))  # type: ignore[index]
    test_ids = list(range(N_TRAIN, N_TRAIN + N_TEST))
    assert [int(m[1]) for m in test] == test_ids  # type: ignore[index]
    assert [int(m[1]) for m in test_labels] == test_ids  # type: ignore[index]

    # Plain CSV readers agree (stand-in for mlcap.data.comp5329.read_captions_csv).
    df = pd.read_csv(small_demo / "train.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == ["ImageID", "Labels", "Caption"] and len(df) == N_TRAIN
    assert df.Caption.tolist() == [m[3] for m in train]  # type: ignore[index]
    df_test = pd.read_csv(small_demo / "test.csv", dtype=str, keep_default_na=False)
    assert list(df_test.columns) == ["ImageID", "Caption"] and len(df_test) == N_TEST


def test_images_are_rgb_jpegs(small_demo: Path) -> None:
    names = {f"{i}.jpg" for i in range(N_TRAIN + N_TEST)}
    assert {p.name for p in (small_demo / "data").iterdir()} == names
    for name in sorted(names):
        with Image.open(small_demo / "data" / name) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64)), name


def test_label_statistics(small_demo: Path) -> None:
    rows = _lines(small_demo / "train.csv", "ImageID,Labels,Caption")
    rows += _lines(small_demo / "test_labels.csv", "ImageID,Labels")
    label_lists = [_labels(line.split(",")[1]) for line in rows]
    for labels in label_lists:
        assert 1 <= len(labels) <= 4 and len(set(labels)) == len(labels)
        assert set(labels) <= set(DEMO_LABEL_NAMES) - {12}
    counts = pd.Series([lab for labels in label_lists for lab in labels]).value_counts()
    assert counts.index[0] == 1
    assert 0.6 < counts[1] / len(label_lists) < 0.9
    assert 1.9 < np.mean([len(labels) for labels in label_lists]) < 2.7
    assert len(counts) >= 14  # a long tail, not a handful of labels


def test_captions_name_only_present_objects(small_demo: Path) -> None:
    df = pd.read_csv(small_demo / "train.csv", dtype=str, keep_default_na=False)
    patterns = {
        lab: re.compile(r"\b(?:" + "|".join(map(re.escape, nouns)) + r")\b", re.IGNORECASE)
        for lab, nouns in demo_scene.NOUNS.items()
    }
    n_mentioned = 0
    for row in df.itertuples():
        named = {lab for lab, pat in patterns.items() if pat.search(row.Caption)}
        present = set(_labels(row.Labels))
        assert named, f"{row.ImageID}: caption names no object: {row.Caption!r}"
        assert named <= present, f"{row.ImageID}: caption names absent objects: {row.Caption!r}"
        n_mentioned += len(named)
    # Captions must leave objects out, or the image would add nothing.
    n_present = sum(len(_labels(v)) for v in df.Labels)
    assert 0.5 < n_mentioned / n_present < 0.8


def test_same_seed_is_byte_identical(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", n_train=40, n_test=10, seed=5)
    b = generate_demo(tmp_path / "b", n_train=40, n_test=10, seed=5)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files_a) == 54  # 50 images, 3 CSVs, demo.json
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_demo(tmp_path / "c", n_train=40, n_test=10, seed=6)
    assert (c / "train.csv").read_bytes() != (a / "train.csv").read_bytes()


@pytest.mark.parametrize(
    "kwargs", [{"n_train": 0}, {"n_test": 0}, {"image_size": 16}, {"seed": -1}, {"n_train": 2.5}]
)
def test_bad_parameters_are_refused(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate_demo(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ensure_demo(tmp_path / "x", **kwargs)  # type: ignore[arg-type]


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def test_ensure_demo_generates_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache" / "demo"
    assert ensure_demo(root, n_train=20, n_test=5) == root.absolute()
    assert (root / "demo.json").is_file() and len(list((root / "data").iterdir())) == 25
    assert not _leftovers(root.parent)

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("must not regenerate")

    monkeypatch.setattr(demo, "generate_demo", fail)
    assert ensure_demo(str(root), n_train=20, n_test=5) == root.absolute()


def test_ensure_demo_fills_an_empty_dir(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    ensure_demo(root, n_train=10, n_test=5)
    assert (root / "demo.json").is_file()


def test_ensure_demo_refuses_other_parameters_and_foreign_dirs(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    ensure_demo(root, n_train=10, n_test=5)
    with pytest.raises(FileExistsError, match=re.escape(str(root))):
        ensure_demo(root, n_train=10, n_test=5, seed=1)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo data set"):
        ensure_demo(foreign, n_train=10, n_test=5)
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a demo data set"):
        ensure_demo(tmp_path / "file", n_train=10, n_test=5)


def test_ensure_demo_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_generate = demo.generate_demo

    def crash(root: Path, **kwargs: int) -> Path:
        real_generate(root, **kwargs)
        raise KeyboardInterrupt  # e.g. Ctrl-C after most files are written

    monkeypatch.setattr(demo, "generate_demo", crash)
    root = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(root, n_train=10, n_test=5)
    assert not root.exists() and not _leftovers(tmp_path)
    monkeypatch.setattr(demo, "generate_demo", real_generate)
    ensure_demo(root, n_train=10, n_test=5)
    assert (root / "demo.json").is_file()


def test_ensure_demo_concurrent_callers_generate_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_generate = demo.generate_demo
    calls: list[Path] = []

    def counting(root: Path, **kwargs: int) -> Path:
        calls.append(root)
        return real_generate(root, **kwargs)

    monkeypatch.setattr(demo, "generate_demo", counting)
    root = tmp_path / "demo"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_demo(root, n_train=30, n_test=5)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [root.absolute()] * 3


def test_fusion_beats_each_modality(tmp_path: Path) -> None:
    """The demo exists to train image+caption fusion: each modality alone must fall clearly short of both."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer
    from threadpoolctl import threadpool_limits

    root = generate_demo(tmp_path / "demo", n_train=600, n_test=300, seed=0)
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(root / "test.csv", dtype=str, keep_default_na=False)
    test = test.merge(pd.read_csv(root / "test_labels.csv", dtype=str), on="ImageID", validate="1:1")
    mlb = MultiLabelBinarizer(classes=list(range(1, 20)))
    y_train = mlb.fit_transform([_labels(v) for v in train.Labels])
    y_test = mlb.transform([_labels(v) for v in test.Labels])
    seen = y_train.any(axis=0)  # label 12 (and maybe a rare one) has no positives to learn from

    def pixels(ids: pd.Series) -> np.ndarray:
        return np.stack(
            [np.asarray(Image.open(root / "data" / i).reduce(8), dtype=np.float32).ravel() / 255 for i in ids]
        )

    vectorizer = CountVectorizer(binary=True)
    words_train = vectorizer.fit_transform(train.Caption).toarray()
    words_test = vectorizer.transform(test.Caption).toarray()
    pix_train, pix_test = pixels(train.ImageID), pixels(test.ImageID)

    def samples_f1(x_train: np.ndarray, x_test: np.ndarray) -> float:
        clf = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=2000))
        # One BLAS thread: these small fits gain nothing from more and would fight other tests for the CPU.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # convergence chatter on tiny data
            clf.fit(x_train, y_train[:, seen])
        proba = np.zeros(y_test.shape)
        proba[:, seen] = clf.predict_proba(x_test)
        pred = (proba >= 0.5).astype(int)
        empty = pred.sum(axis=1) == 0  # at least the most likely label: no free zero-F1 rows for any model
        pred[empty, proba[empty].argmax(axis=1)] = 1
        return float(f1_score(y_test, pred, average="samples"))

    f1_image = samples_f1(pix_train, pix_test)
    f1_caption = samples_f1(words_train, words_test)
    f1_both = samples_f1(np.hstack([pix_train, words_train]), np.hstack([pix_test, words_test]))
    assert min(f1_image, f1_caption) > 0.5, (f1_image, f1_caption)  # both modalities carry signal
    assert f1_both > max(f1_image, f1_caption) + 0.03, (f1_image, f1_caption, f1_both)


def test_a_read_only_or_full_cache_folder_is_one_clear_error(tmp_path: Path) -> None:
    """Issue 19, finding 6, for the demo data under paths.cache_dir: a read-only folder (a real read-only
    mount: root ignores chmod) or a full one (a 100 KB tmpfs) is one line naming the folder and what to do,
    with no temporary folder left; a complete set on a read-only mount is still served."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        with pytest.raises(CacheFolderError) as caught:
            ensure_demo(disk / "demo-data", n_train=10, n_test=5)
        assert str(caught.value).startswith(f"demo data: cannot write {disk}: the folder is not writable")
        assert "paths.cache_dir=<folder>" in str(caught.value) and "data.root=<folder>" in str(caught.value)
    with tmpfs(tmp_path / "small", "size=100k") as disk:
        with pytest.raises(CacheFolderError, match="the disk is full"):
            ensure_demo(disk / "demo-data", n_train=200, n_test=50, image_size=64)
        assert [p.name for p in disk.iterdir() if p.name != "demo-data.lock"] == []
    with tmpfs(tmp_path / "served", "size=2m") as disk:
        root = ensure_demo(disk / "demo-data", n_train=10, n_test=5)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert ensure_demo(disk / "demo-data", n_train=10, n_test=5) == root
