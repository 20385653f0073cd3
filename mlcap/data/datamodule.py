"""LightningDataModule over the rows of any reader (mlcap.data.reader): COMP5329, CSV, JSON Lines, COCO."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from platformdirs import user_cache_dir
from torch.utils.data import DataLoader

from mlcap.data.comp5329 import DataFormatError
from mlcap.data.datasets import (
    CaptionChoice,
    CaptionRows,
    ImagePreprocessing,
    image_hw,
    image_transform,
    whole_batch,
    worker_context,
)
from mlcap.data.feature_cache import FeatureCache
from mlcap.data.folds import fold_indices
from mlcap.data.inputs import ModelInputs, split_features
from mlcap.data.metadata import DataMetadata
from mlcap.data.reader import CaptionReader, Split, check_image_files, check_known_labels
from mlcap.data.text import Vocabulary, preprocess_caption

log = logging.getLogger(__name__)
EVAL_CAPTIONS = ("all", "first")


def default_cache_dir() -> Path:
    return Path(user_cache_dir("mlcap"))


def multi_hot(label_lists: Sequence[Sequence[str]], names: Sequence[str]) -> torch.Tensor:
    index = {label: i for i, label in enumerate(names)}
    target = torch.zeros(len(label_lists), len(names))
    for row, labels in enumerate(label_lists):
        target[row, [index[label] for label in labels]] = 1.0
    return target


def split_indices(rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle split; independent of the training seed so every run of a study sees the same rows.

    The one place rows are split into training and validation (a k-fold split would replace this)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(rows)
    n_val = max(1, round(rows * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def portable_config(node: DictConfig) -> dict[str, Any]:
    """The data node as plain values (the checkpoint keeps them; predict.py rebuilds the reader from them):
    resolved in its config, except the reader node, kept with its `${..key}` links so that a new data.root or
    file key still reaches it; a root that is set is made absolute (predict.py may run elsewhere)."""
    plain: dict[str, Any] = {}
    for key in node:
        if key == "reader" or OmegaConf.is_missing(node, key):
            plain[key] = OmegaConf.to_container(node, resolve=False)[key]
        else:
            value = node[key]
            plain[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if isinstance(plain.get("root"), str) and plain["root"] != "???":
        plain["root"] = str(Path(plain["root"]).expanduser().absolute())
    return plain


def build_datamodule(
    node: DictConfig | Mapping[str, Any], vocab: Vocabulary | None = None, **overrides: Any
) -> CaptionImageDataModule:
    """The one way to build the data module (train.py, predict.py, mlcap.eda): the `data` node (`_target_`
    with its `reader` node) with `overrides` (predict.py: what the checkpoint fixes) merged over its keys."""
    plain = portable_config(node) if isinstance(node, DictConfig) else dict(node)
    merged = OmegaConf.merge(OmegaConf.create(plain), overrides)
    datamodule: CaptionImageDataModule = hydra.utils.instantiate(merged, vocab=vocab)
    datamodule.config = portable_config(merged)  # type: ignore[arg-type]
    return datamodule


class CaptionImageDataModule(pl.LightningDataModule):
    """Reads rows through its reader, validates, splits and tokenises them; serves images or cached features.

    It knows nothing of models: `use_inputs` takes the model's image preprocessing and the cached outputs of
    its frozen parts in one ModelInputs (from `mlcap.extraction.prepare_inputs`), served in place of decoded
    images; without cached features it decodes images for a backbone that trains. An image may have several
    captions: training draws one per image per epoch; validation and prediction average the
    probabilities over all of them (`eval_captions: all`) or use the first (`first`).
    """

    def __init__(
        self,
        *,
        reader: CaptionReader,
        batch_size: int,
        val_fraction: float,
        split_seed: int,
        folds: int | None = None,
        fold: int = 0,
        train_rows: int | None,
        max_len: int,
        image_size: int | Sequence[int] | None,
        num_workers: int,
        cache: bool,
        cache_dir: str | None,
        cache_views: int,
        extract_batch_size: int,
        vocab_min_freq: int,
        eval_captions: str,
        vocab: Vocabulary | None = None,
        label_names: Sequence[str] | None = None,
        **reader_keys: Any,
    ) -> None:
        """`reader_keys`: the reader's own data keys (data.root, data.train_file, data.columns, ...), which the
        `reader` node reads through `${..key}`; they sit in the data node so each is one `data.` key."""
        super().__init__()
        if eval_captions not in EVAL_CAPTIONS:
            raise ValueError(f"data.eval_captions must be one of {EVAL_CAPTIONS}, got {eval_captions!r}")
        self.reader = reader
        # What joins two labels in submission.csv (predict.py): the data's label_sep, a space where it has none.
        self.label_sep = str(reader_keys.get("label_sep") or " ")
        self.config: dict[str, Any] = {}
        self.label_names = list(label_names) if label_names is not None else None
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.folds, self.fold = folds, fold  # k-fold cross-validation (mlcap.data.folds); null: one split
        self.train_rows = train_rows
        self.max_len = max_len
        # None: the image encoder's own input size (timm's data config), known once it is attached.
        self._image_size = image_hw(image_size) if image_size is not None else None
        self.num_workers = num_workers
        self.use_cache = cache
        self.cache = FeatureCache(cache_dir or default_cache_dir() / "features")
        self.cache_views = cache_views
        self.extract_batch_size = extract_batch_size
        self.vocab_min_freq = vocab_min_freq
        self.eval_captions = eval_captions
        self.vocab = vocab
        self.inputs: ModelInputs | None = None  # `use_inputs`; `_features`: its image features cut per split
        self.tables: dict[str, pd.DataFrame] = {}
        self._features: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- reading
    def prepare_data(self) -> None:
        self.reader.prepare()

    def _read(self, split: Split) -> pd.DataFrame:
        """The reader's rows, checked (labels known, not empty); counting comes before any image is decoded."""
        table = self.reader.read(split)
        if table.empty:
            task = "training" if split == "train" else "prediction"
            raise DataFormatError(
                f"{self.reader.describe(split)} has a header but no data rows; {task} needs at least one. Check "
                "that it is the complete file (or point the data keys at the right one)."
            )
        if split == "train" and self.label_names is None:
            self.label_names = self.reader.label_names(table)
            clash = [name for name in self.label_names if self.label_sep in name]
            if clash:
                raise DataFormatError(
                    f"label name(s) {clash[:3]} of {self.reader.describe(split)} hold data.label_sep="
                    f"{self.label_sep!r}, which joins labels in submission.csv: set data.label_sep to text no "
                    "label name holds (e.g. '|')"
                )
        if "labels" in table and self.label_names is not None:
            check_known_labels(table, self.label_names)
        return table

    def _load_images_and_tokens(self, table: pd.DataFrame, split: Split) -> pd.DataFrame:
        """Decode-check every image (all at once, one error), then tokenise every caption."""
        check_image_files(table, self.reader.describe(split))
        table["tokens"] = [[preprocess_caption(c) for c in captions] for captions in table["captions"]]
        return table

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.tables:
            table = self._read("train")
            if self.folds is None:
                train_idx, val_idx = split_indices(len(table), self.val_fraction, self.split_seed)
            else:
                assert self.label_names is not None
                train_idx, val_idx = fold_indices(
                    list(table["labels"]), self.label_names, self.folds, self.fold, self.split_seed
                )
            self._check_sizes(len(table), len(train_idx), len(val_idx))
            unused_idx = None
            if self.train_rows is not None:
                train_idx, unused_idx = self._subsample(train_idx)
            table = self._load_images_and_tokens(table, "train")
            if unused_idx is not None:
                # Kept so the feature cache still covers the whole file: a learning curve reuses one cache.
                self.tables["unused"] = table.iloc[unused_idx].reset_index(drop=True)
            self.tables["train"] = table.iloc[train_idx].reset_index(drop=True)
            self.tables["val"] = table.iloc[val_idx].reset_index(drop=True)
            if self.vocab is None:
                self.vocab = Vocabulary.build(self.train_token_lists, min_freq=self.vocab_min_freq)
            log.info(
                "data: %d train / %d val rows (%d captions) from %s, %d labels, vocabulary %d words",
                len(self.tables["train"]),
                len(self.tables["val"]),
                sum(len(c) for c in table["captions"]),
                self.reader.describe("train"),
                len(self.label_names or ()),
                len(self.vocab),
            )
        if stage == "predict" and "predict" not in self.tables:
            if self.vocab is None:
                raise ValueError("predicting needs the training vocabulary (it is stored in the checkpoint)")
            self.tables["predict"] = self._load_images_and_tokens(self._read("predict"), "predict")

    def _check_sizes(self, rows: int, n_train: int, n_val: int) -> None:
        """Refuse splits and batches that cannot train, naming the counts and the key to change.

        A training batch needs 2 rows for batch norm; a last batch of 1 cannot happen since the training
        loader drops an incomplete last batch whenever there is more than one batch.
        """
        path = self.reader.describe("train")
        if n_train < 2:
            raise DataFormatError(
                f"{path}: {rows} rows give {n_train} training and {n_val} validation rows at "
                f"data.val_fraction={self.val_fraction}; training needs at least 2 training rows (batch norm "
                "cannot train on one). Add rows or lower data.val_fraction."
            )
        if self.batch_size < 2:
            raise DataFormatError(
                f"data.batch_size={self.batch_size} gives training batches of one row, which batch norm cannot "
                "train on; use data.batch_size >= 2."
            )

    def _subsample(self, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A seeded subset of `train_rows` training rows (learning curves); validation rows are unchanged."""
        assert self.train_rows is not None
        if not 2 <= self.train_rows <= len(train_idx):
            raise DataFormatError(
                f"data.train_rows={self.train_rows}, but the split of {self.reader.describe('train')} has "
                f"{len(train_idx)} training rows; use 2..{len(train_idx)} (batch norm cannot train on one) "
                "or null for all"
            )
        order = np.random.default_rng(self.split_seed).permutation(train_idx)
        return np.sort(order[: self.train_rows]), np.sort(order[self.train_rows :])

    def metadata(self) -> DataMetadata:
        """What a checkpoint carries to rebuild this data's inputs (after setup("fit"); the image size is
        resolved once the image encoder is known)."""
        assert self.vocab is not None and self.label_names is not None
        return DataMetadata(
            label_names=tuple(self.label_names),
            vocabulary=tuple(self.vocab.tokens),
            max_len=self.max_len,
            image_size=self._image_size,
            cache_views=self.cache_views,
            eval_captions=self.eval_captions,
            data=self.config,
        )

    @property
    def train_token_lists(self) -> list[list[str]]:
        """Every preprocessed caption of the train split, for the vocabulary and word vectors (train data only)."""
        return [tokens for row in self.tables["train"]["tokens"] for tokens in row]

    # ------------------------------------------------- inputs the model decides
    def image_size_for(self, encoder_size: tuple[int, int]) -> tuple[int, int]:
        """`data.image_size`, or (null) the image encoder's own input size."""
        return self._image_size if self._image_size is not None else encoder_size

    def sources(self) -> list[str]:
        """The CSVs read so far: "train" (its train, validation and unused rows) and/or "predict"."""
        return [name for name in ("train", "predict") if name in self.tables]

    def splits(self) -> list[str]:
        return [name for name in ("train", "val", "predict") if name in self.tables]

    def _source_tables(self, source: str) -> list[tuple[str, pd.DataFrame]]:
        # Train, then validation, then rows left out by `train_rows`: one array covers the whole CSV.
        names = ["predict"] if source == "predict" else ["train", "val", "unused"]
        return [(name, self.tables[name]) for name in names if name in self.tables]

    def images(self, source: str) -> tuple[list[Path], list[str]]:
        """Image paths of every row of a CSV, with where each row comes from ("train.csv, line 17")."""
        tables = [table for _, table in self._source_tables(source)]
        return [p for t in tables for p in t["path"]], [w for t in tables for w in t["source"]]

    def captions(self, split: str) -> list[str]:
        """Every caption of a split's rows, row after row (what a sentence encoder's cache covers)."""
        return [caption for row in self.tables[split]["captions"] for caption in row]

    def use_inputs(self, inputs: ModelInputs) -> None:
        """Take what the model decides (after setup), whole, replacing any earlier inputs; refuse inputs that
        do not fit these rows. The splits of a CSV with features serve them instead of decoding images."""
        parts = {source: [(n, len(t)) for n, t in self._source_tables(source)] for source in self.sources()}
        features = split_features(
            inputs, parts, {split: len(self.captions(split)) for split in self.splits()}
        )
        self.inputs, self._features = inputs, features

    @property
    def image_preprocessing(self) -> ImagePreprocessing | None:
        """How images become the image encoder's input (the model's, from `use_inputs`)."""
        return self.inputs.preprocessing if self.inputs is not None else None

    @property
    def serves_features(self) -> bool:
        return bool(self._features)

    # ------------------------------------------------------------- dataloaders
    def labels(self, split: str) -> torch.Tensor:
        """Multi-hot targets [rows, labels] of a labelled split, without building its dataset."""
        table = self.tables[split]
        if "labels" not in table:
            raise ValueError(f"the {split!r} split has no labels")
        assert self.label_names is not None
        return multi_hot(table["labels"], self.label_names)

    def dataset(self, split: str, train: bool, view: int = 0) -> CaptionRows:
        table = self.tables[split]
        assert self.vocab is not None
        tokens, lengths = self.vocab.encode_batch([t for row in table["tokens"] for t in row], self.max_len)
        labels = self.labels(split) if "labels" in table else None
        sentences = self.inputs.sentences.get(split) if self.inputs is not None else None
        counts = torch.tensor([len(row) for row in table["tokens"]], dtype=torch.long)
        captions = None  # one caption a row: the caption is the row
        if int(counts.max()) > 1:
            mode = "draw" if train else self.eval_captions
            captions = CaptionChoice(torch.cumsum(counts, 0) - counts, counts, mode)
        if split in self._features:
            return CaptionRows(
                tokens,
                lengths,
                labels,
                captions=captions,
                features=self._features[split],
                random_view=train,
                view=view,
                sentences=sentences,
            )
        if self.image_preprocessing is None:
            raise ValueError(
                "no image preprocessing: give datamodule.use_inputs(mlcap.extraction.prepare_inputs(...)) first"
            )
        pre = self.image_preprocessing
        transform = image_transform(pre.size, pre.mean, pre.std, train=train, interpolation=pre.interpolation)
        return CaptionRows(
            tokens,
            lengths,
            labels,
            image_paths=list(table["path"]),
            transform=transform,
            captions=captions,
            draft_size=pre.size,
            sentences=sentences,
        )

    def _loader(self, split: str, train: bool, view: int = 0) -> DataLoader:
        """Batches fetched whole (torch's DataLoader calls `CaptionRows.__getitems__` with a batch's indices);
        an incomplete last training batch is dropped when there is more than one batch (batch norm cannot
        train on a batch of one row)."""
        dataset = self.dataset(split, train, view)
        workers = 0 if self.serves_features else self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            collate_fn=whole_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            multiprocessing_context=worker_context(workers),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", train=False)

    def view_dataloaders(self, split: str) -> list[DataLoader]:
        """One loader per cached flip view of a split, for test-time augmentation (needs the feature cache)."""
        if not self.serves_features:
            raise ValueError(
                "test-time augmentation (tta=true) needs cached features (a frozen backbone, data.cache=true)"
            )
        return [self._loader(split, train=False, view=v) for v in range(self.cache_views)]
