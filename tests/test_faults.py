"""Fault injection: each bad input is built on a copy of the tiny demo data and must be named before work starts.

Every test here failed on the code before issue 12 (a row glued onto the previous caption, a truncated JPEG
passing the pre-flight check, a damaged feature cache trusted or crashing every run, misleading size errors,
bare checkpoint errors). They call the data module, the reader or the cache directly: no training run.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image

from mlcap.data.comp5329 import DataFormatError, read_captions_csv
from mlcap.data.datamodule import CaptionImageDataModule, build_datamodule
from mlcap.data.feature_cache import ExtractionSpec, FeatureCache
from mlcap.data.text import Vocabulary
from mlcap.extraction import prepare_inputs
from mlcap.models.image_encoders import ImageEncoder

SPEC = ExtractionSpec("small_cnn", "test-weights", (32, 32), (0.5,) * 3, (0.5,) * 3, views=4)


@pytest.fixture
def data(tiny_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny demo data set, free to damage."""
    return Path(shutil.copytree(tiny_demo, tmp_path / "data-copy"))


def module(root: Path, vocab: Vocabulary | None = None, **overrides: object) -> CaptionImageDataModule:
    """data=comp5329 on `root`, as train.py builds it, with the test's overrides."""
    settings = [
        "data.image_size=32",
        "data.num_workers=0",
        "data.cache_views=1",
        f"data.cache_dir={root / 'cache'}",
    ]
    data = compose_config("train", "data=comp5329", f"data.root={root}", *settings).data
    return build_datamodule(data, vocab=vocab, **overrides)


def replace_line(path: Path, line: int, text: str) -> str:
    """Replace physical line `line` (1-based) of a CSV; returns the old line."""
    lines = path.read_text(encoding="utf-8").split("\n")
    old, lines[line - 1] = lines[line - 1], text
    path.write_text("\n".join(lines), encoding="utf-8")
    return old


def image_at(csv: Path, line: int) -> str:
    """The ImageID of the record starting at physical line `line`."""
    return csv.read_text(encoding="utf-8").split("\n")[line - 1].split(",", 1)[0]


def assert_names(message: str, path: Path, line: int) -> None:
    assert str(path) in message, message
    assert re.search(rf"\bline {line}\b", message), message


# ------------------------------------------------------------------------------------------ 1. rows


@pytest.mark.parametrize("bad_id", ["16.png", "16", '"16.jpg"', "16.jpeg"])
@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
def test_row_with_a_bad_image_id_is_an_error_not_glued(data: Path, name: str, bad_id: str) -> None:
    csv = data / name
    rows = len(read_captions_csv(csv))
    labels = "1," if name == "train.csv" else ""
    replace_line(csv, 5, f'{bad_id},{labels}"a dog on a bench"')
    with pytest.raises(DataFormatError) as exc:
        read_captions_csv(csv)
    assert_names(str(exc.value), csv, 5)
    assert ".jpg" in str(exc.value) and bad_id in str(exc.value)
    replace_line(csv, 5, f'9999.jpg,{labels}"a dog on a bench"')
    assert len(read_captions_csv(csv)) == rows  # a valid row in its place: nothing lost, nothing merged


def test_empty_captions_are_kept_and_counted(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = data / "test.csv"
    rows = len(read_captions_csv(csv))
    for line in (3, 7):
        replace_line(csv, line, image_at(csv, line) + ',""')
    with caplog.at_level(logging.WARNING):
        table = read_captions_csv(csv)
    assert len(table) == rows
    assert (table["caption"] == "").sum() == 2
    assert "2 row(s) with an empty caption" in caplog.text
    assert "line 3" in caplog.text and "line 7" in caplog.text


# ---------------------------------------------------------------------------------------- 2. images


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.9)])


def full_decode_fails(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB")
    except OSError:
        return True
    return False


def garble(path: Path) -> None:
    """0xFF bytes over the entropy-coded data (headers still parse), placed where a full decode fails.

    Much garbling decodes to wrong pixels without any error, for every decoder; the promise is that the
    pre-flight check rejects what a full decode (the extraction) would reject.
    """
    original = path.read_bytes()
    scan = original.index(b"\xff\xda") + 16  # past the start-of-scan header: the entropy-coded data
    for percent in range(0, 90, 10):
        start = scan + (len(original) - scan) * percent // 100
        data = original[:start] + b"\xff" * 64 + original[start + 64 :]
        if full_decode_fails(data):
            path.write_bytes(data)
            return
    raise AssertionError(f"could not garble {path} so that a full decode fails")


def test_preflight_decodes_and_names_every_unreadable_image(data: Path) -> None:
    csv = data / "train.csv"
    truncated, garbled = image_at(csv, 4), image_at(csv, 9)
    truncate(data / "data" / truncated)
    garble(data / "data" / garbled)
    for name in (truncated, garbled):
        with Image.open(data / "data" / name) as image:
            assert image.size == (32, 32)  # the header still parses: only decoding finds the damage
    with pytest.raises(DataFormatError) as exc:
        module(data).setup("fit")
    message = str(exc.value)
    assert "2 image(s)" in message
    assert f"line 4 ({truncated})" in message and f"line 9 ({garbled})" in message
    assert str(csv) in message


def test_extraction_names_the_image_and_csv_line_in_one_line(data: Path) -> None:
    """An image damaged after the pre-flight check: one clear line, not a worker traceback."""
    dm = module(data, num_workers=1)
    dm.setup("fit")
    victim = dm.tables["train"].iloc[3]
    truncate(Path(victim["path"]))
    encoder = ImageEncoder(
        name="small_cnn", weights=None, pretrained=False, freeze=True, dropout=0.0, trainable_blocks=0,
        label_attention=False, embed_dim=4, num_labels=19,
    )  # fmt: skip
    with pytest.raises(DataFormatError) as exc:
        dm.use_inputs(prepare_inputs(dm, encoder))
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert str(victim["path"]) in message
    assert_names(message, data / "train.csv", int(victim["line"]))
    assert not list((data / "cache").glob("*.npy"))  # nothing half-extracted is cached


# ----------------------------------------------------------------------------------- 3. feature cache


class CountingExtractor:
    def __init__(self, rows: int, value: float = 1.0) -> None:
        self.calls = 0
        self.rows = rows
        self.value = value

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return np.full((self.rows, 4, 3), self.value, dtype=np.float32)


def data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        return handle.tell()


def damage_values_ff(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = data_offset(path)
    data[start + 8 : start + 16] = b"\xff" * 8  # float16 0xFFFF is NaN
    path.write_bytes(bytes(data))


def damage_bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data_offset(path) + 5] ^= 0x04  # still a finite number, just a wrong one
    path.write_bytes(bytes(data))


def damage_zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def damage_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


def damage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[12:20] = b"\xff\x00{('[)]"  # inside the header dict: numpy's literal_eval raises SyntaxError
    path.write_bytes(bytes(data))


DAMAGE = [damage_values_ff, damage_bit_flip, damage_zero_bytes, damage_truncated, damage_header]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_cache_is_reported_recomputed_and_then_trusted(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [tmp_path / f"{i}.jpg" for i in range(6)]
    for path in paths:
        path.write_bytes(b"x")  # the key only needs name, size and mtime
    cache = FeatureCache(tmp_path / "cache")
    cache.load_or_create(SPEC, paths, CountingExtractor(len(paths)))
    damage(cache.path(SPEC, paths))

    extractor = CountingExtractor(len(paths), value=2.0)
    with caplog.at_level(logging.WARNING, logger="mlcap.data.feature_cache"):
        features = FeatureCache(tmp_path / "cache").load_or_create(SPEC, paths, extractor)
    assert extractor.calls == 1  # recomputed, not trusted
    assert np.all(features == 2.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert str(cache.path(SPEC, paths)) in warnings[0].getMessage()

    again = FeatureCache(tmp_path / "cache").load_or_create(SPEC, paths, extractor)
    assert extractor.calls == 1  # the next run trusts the rewritten file
    np.testing.assert_array_equal(again, features)


def test_non_finite_features_are_never_cached(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for path in paths:
        path.write_bytes(b"x")
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="non-finite"):
        cache.load_or_create(SPEC, paths, CountingExtractor(len(paths), value=float("nan")))
    assert not cache.path(SPEC, paths).exists()


# --------------------------------------------------------------------------------------------- 4. sizes


def header_only(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8").split("\n", 1)[0] + "\n", encoding="utf-8")


def keep_rows(path: Path, rows: int) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")


def test_header_only_train_csv_is_named(data: Path) -> None:
    header_only(data / "train.csv")
    with pytest.raises(DataFormatError) as exc:
        module(data).setup("fit")
    assert str(data / "train.csv") in str(exc.value) and "no data rows" in str(exc.value)


def test_too_few_rows_for_the_split_names_counts_and_key(data: Path) -> None:
    keep_rows(data / "train.csv", 2)
    with pytest.raises(DataFormatError) as exc:
        module(data).setup("fit")
    message = str(exc.value)
    assert str(data / "train.csv") in message
    assert "2 rows" in message and "1 training" in message and "data.val_fraction" in message


def test_one_training_row_is_refused(data: Path) -> None:
    with pytest.raises(DataFormatError, match=r"data\.train_rows"):
        module(data, train_rows=1).setup("fit")


def test_training_batch_of_one_is_refused(data: Path) -> None:
    with pytest.raises(DataFormatError, match=r"data\.batch_size=1"):
        module(data, batch_size=1).setup("fit")


def test_header_only_test_csv_is_named_before_predicting(data: Path) -> None:
    header_only(data / "test.csv")
    dm = module(data, vocab=Vocabulary(["[PAD]", "[UNK]", "dog"]))
    with pytest.raises(DataFormatError) as exc:
        dm.setup("predict")
    assert str(data / "test.csv") in str(exc.value) and "no data rows" in str(exc.value)


def test_size_errors_come_before_decoding_images(data: Path) -> None:
    """Counting rows is instant; the error must not wait for (or be hidden by) the image check."""
    keep_rows(data / "train.csv", 2)
    shutil.rmtree(data / "data")
    with pytest.raises(DataFormatError, match="data.val_fraction"):
        module(data).setup("fit")


# ---------------------------------------------------------------------------------------- 5. checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) Lightning checkpoint with optimizer state, as `last.ckpt` is."""
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):  # noqa: ANN001, ANN202
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):  # noqa: ANN202
            return torch.optim.SGD(self.parameters(), lr=0.1)

    folder = tmp_path_factory.mktemp("ckpt")
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder, accelerator="cpu",
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 2)), batch_size=2)
    trainer.fit(Tiny(), loader)
    trainer.save_checkpoint(folder / "last.ckpt")
    return folder / "last.ckpt"


def damaged_copy(source: Path, folder: Path, how: str) -> Path:
    target = folder / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    if how == "zero-byte":
        data = b""
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbled":
        middle = len(data) // 2
        data = data[:middle] + b"\xff" * 256 + data[middle + 256 :]
    elif how == "text":
        data = b"not a checkpoint at all\n"
    elif how == "not-lightning":
        torch.save({"layer.weight": torch.ones(1, 2)}, target)
        return target
    target.write_bytes(data)
    return target


@pytest.mark.parametrize("how", ["zero-byte", "truncated", "garbled", "text", "not-lightning"])
def test_damaged_checkpoint_is_named_with_what_to_do(good_checkpoint: Path, tmp_path: Path, how: str) -> None:
    from mlcap.checkpoints import CheckpointError, check_resumable, load_checkpoint

    path = damaged_copy(good_checkpoint, tmp_path, how)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and "ckpt_path=" in str(exc.value)
    with pytest.raises(CheckpointError) as exc:
        check_resumable(path, automatic=True)
    assert str(path) in str(exc.value) and "delete" in str(exc.value) and "ckpt_path=" in str(exc.value)


def test_good_checkpoint_loads_and_resumes(good_checkpoint: Path, tmp_path: Path) -> None:
    from mlcap.checkpoints import CheckpointError, check_resumable, load_checkpoint

    checkpoint = load_checkpoint(good_checkpoint)
    assert "state_dict" in checkpoint and "optimizer_states" in checkpoint
    check_resumable(good_checkpoint)
    weights_only = tmp_path / "weights.ckpt"
    torch.save({k: v for k, v in checkpoint.items() if k != "optimizer_states"}, weights_only)
    load_checkpoint(weights_only)  # fine for predicting ...
    with pytest.raises(CheckpointError, match="optimizer"):
        check_resumable(weights_only)  # ... but it cannot resume training
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    "row",
    ['3.jpg\t1\t"a tab-separated row"', '16.png,1 2,an unquoted caption"', '"16,jpg",1,"a quoted id"'],
    ids=["tab", "unquoted-caption", "quoted-comma-id"],
)
def test_rows_written_otherwise_are_named_not_glued(tmp_path: Path, row: str) -> None:
    """Rows with another separator or an unquoted caption once vanished into the previous caption."""
    path = tmp_path / "train.csv"
    path.write_text(f'ImageID,Labels,Caption\n1.jpg,1,"a cat"\n{row}\n2.jpg,2,"a dog"\n')
    with pytest.raises(DataFormatError, match=r"train\.csv, line 3: this line looks like the start of a row"):
        read_captions_csv(path)


def test_a_row_behind_a_lone_carriage_return_is_named(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    path.write_bytes(b'ImageID,Caption\n1.jpg,"a cat"\r2.jpg,"a dog"\n3.jpg,"a bird"\n')
    with pytest.raises(DataFormatError, match=r"test\.csv, line 2: a lone carriage return .* '2\.jpg,"):
        read_captions_csv(path)


def test_a_cache_file_made_for_another_spec_is_not_trusted(tmp_path: Path) -> None:
    """A forged pair (another key's .npy and .json copied over this key's) passes checksum, shape and
    finiteness; the spec in its .json must match the key's too."""
    cache = FeatureCache(tmp_path)
    paths = [tmp_path / f"{i}.jpg" for i in range(4)]
    for p in paths:
        p.write_bytes(b"x")
    small = ExtractionSpec(
        encoder="enc", weights="w", image_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, views=1
    )
    large = ExtractionSpec(
        encoder="enc", weights="w", image_size=(48, 48), mean=(0.5,) * 3, std=(0.5,) * 3, views=1
    )
    cache.load_or_create(large, paths, lambda: np.ones((4, 1, 3), dtype=np.float32))
    for suffix in (".npy", ".json"):
        shutil.copyfile(
            cache.path(large, paths).with_suffix(suffix), cache.path(small, paths).with_suffix(suffix)
        )
    fresh = cache.load_or_create(small, paths, lambda: np.zeros((4, 1, 3), dtype=np.float32))
    assert not fresh.any()  # recomputed for its own spec, not the 48 px features
