"""LightningDataModule for caption+image CSV data sets in the COMP5329 layout (the real one and the demo)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from platformdirs import user_cache_dir
from torch.utils.data import DataLoader

from mlcap.data.comp5329 import DataFormatError, check_images, check_labels, read_captions_csv
from mlcap.data.datasets import CaptionRows, ImagePreprocessing, image_hw, image_transform, whole_batch
from mlcap.data.demo import ensure_demo
from mlcap.data.feature_cache import FeatureCache
from mlcap.data.folds import fold_indices
from mlcap.data.metadata import DataMetadata
from mlcap.data.text import Vocabulary, preprocess_caption

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(user_cache_dir("mlcap"))


def multi_hot(label_lists: Sequence[Sequence[int]], label_ids: Sequence[int]) -> torch.Tensor:
    index = {label: i for i, label in enumerate(label_ids)}
    target = torch.zeros(len(label_lists), len(label_ids))
    for row, labels in enumerate(label_lists):
        target[row, [index[label] for label in labels]] = 1.0
    return target


def split_indices(rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle split; independent of the training seed so every run of a study sees the same rows."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(rows)
    n_val = max(1, round(rows * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class CaptionImageDataModule(pl.LightningDataModule):
    """Reads, validates, splits and tokenises the data; serves images or cached frozen-backbone features.

    It knows nothing of models: `mlcap.extraction.prepare_inputs` gives it the model's image preprocessing and
    the cached outputs of the model's frozen parts (`set_features`, `set_sentences`), which it then serves
    in place of decoded images; without them it decodes images for a backbone that trains.
    """

    def __init__(
        self,
        root: str,
        label_ids: Sequence[int],
        train_csv: str = "train.csv",
        predict_csv: str = "test.csv",
        image_dir: str = "data",
        batch_size: int = 64,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        train_rows: int | None = None,
        max_len: int = 32,
        image_size: int | Sequence[int] | None = 224,
        num_workers: int = 2,
        cache: bool = True,
        cache_dir: str | None = None,
        cache_views: int = 4,
        extract_batch_size: int = 64,
        vocab_min_freq: int = 1,
        demo: dict[str, Any] | None = None,
        vocab: Vocabulary | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.label_ids = list(label_ids)
        self.train_csv = train_csv
        self.predict_csv = predict_csv
        self.image_dir = image_dir
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
        self.demo = dict(demo) if demo else None
        self.vocab = vocab
        self.image_preprocessing: ImagePreprocessing | None = None
        self.tables: dict[str, pd.DataFrame] = {}
        self._features: dict[str, torch.Tensor] = {}
        self._sentences: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- reading
    def prepare_data(self) -> None:
        if self.demo is not None:
            ensure_demo(self.root, **self.demo)

    def _csv_path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.root / path

    def _read(self, name: str, labelled: bool) -> pd.DataFrame:
        """The rows of a CSV, with labels checked; counting them comes before any image is decoded."""
        path = self._csv_path(name)
        if not path.exists():
            hint = " (set data.root to the folder holding train.csv, test.csv and data/)"
            raise FileNotFoundError(f"{path} does not exist{hint}")
        table = read_captions_csv(path)
        if table.empty:
            task = "training" if labelled else "prediction"
            raise DataFormatError(
                f"{path} has a header but no data rows; {task} needs at least one. Check that it is the "
                "complete file (or point data.root / data.csv at the right one)."
            )
        if labelled:
            if "labels" not in table:
                raise ValueError(f"{path} has no Labels column; training needs labelled rows")
            check_labels(table, self.label_ids, path)
        table["source"] = [f"{path}, line {line}" for line in table["line"]]
        return table

    def _load_images_and_tokens(self, table: pd.DataFrame, name: str) -> pd.DataFrame:
        """Decode-check every image of the CSV (all at once, one error), then tokenise its captions."""
        check_images(table, self.root / self.image_dir, self._csv_path(name))
        table["path"] = [self.root / self.image_dir / image_id for image_id in table["image_id"]]
        table["tokens"] = [preprocess_caption(caption) for caption in table["caption"]]
        return table

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.tables:
            table = self._read(self.train_csv, labelled=True)
            if self.folds is None:
                train_idx, val_idx = split_indices(len(table), self.val_fraction, self.split_seed)
            else:
                labels = list(table["labels"])
                train_idx, val_idx = fold_indices(
                    labels, self.label_ids, self.folds, self.fold, self.split_seed
                )
            self._check_sizes(len(table), len(train_idx), len(val_idx))
            unused_idx = None
            if self.train_rows is not None:
                train_idx, unused_idx = self._subsample(train_idx)
            table = self._load_images_and_tokens(table, self.train_csv)
            if unused_idx is not None:
                # Kept so the feature cache still covers the whole CSV: a learning curve reuses one cache.
                self.tables["unused"] = table.iloc[unused_idx].reset_index(drop=True)
            self.tables["train"] = table.iloc[train_idx].reset_index(drop=True)
            self.tables["val"] = table.iloc[val_idx].reset_index(drop=True)
            if self.vocab is None:
                self.vocab = Vocabulary.build(self.tables["train"]["tokens"], min_freq=self.vocab_min_freq)
            log.info(
                "data: %d train / %d val rows from %s, vocabulary %d words",
                len(self.tables["train"]),
                len(self.tables["val"]),
                self._csv_path(self.train_csv),
                len(self.vocab),
            )
        if stage == "predict" and "predict" not in self.tables:
            if self.vocab is None:
                raise ValueError("predicting needs the training vocabulary (it is stored in the checkpoint)")
            table = self._read(self.predict_csv, labelled=False)
            self.tables["predict"] = self._load_images_and_tokens(table, self.predict_csv)

    def _check_sizes(self, rows: int, n_train: int, n_val: int) -> None:
        """Refuse splits and batches that cannot train, naming the counts and the key to change.

        A training batch needs 2 rows for batch norm; a last batch of 1 cannot happen since the training
        loader drops an incomplete last batch whenever there is more than one batch.
        """
        path = self._csv_path(self.train_csv)
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
                f"data.train_rows={self.train_rows}, but the split of {self._csv_path(self.train_csv)} has "
                f"{len(train_idx)} training rows; use 2..{len(train_idx)} (batch norm cannot train on one) "
                "or null for all"
            )
        order = np.random.default_rng(self.split_seed).permutation(train_idx)
        return np.sort(order[: self.train_rows]), np.sort(order[self.train_rows :])

    def metadata(self) -> DataMetadata:
        """What a checkpoint carries to rebuild this data's inputs (after setup("fit"); the image size is
        resolved once the image encoder is known)."""
        assert self.vocab is not None
        return DataMetadata(
            label_ids=tuple(self.label_ids),
            vocabulary=tuple(self.vocab.tokens),
            max_len=self.max_len,
            image_size=self._image_size,
            cache_views=self.cache_views,
            root=str(self.root.absolute()),  # predict.py may run from another folder
            image_dir=self.image_dir,
        )

    @property
    def train_token_lists(self) -> list[list[str]]:
        """Preprocessed train-split captions, for training word vectors on train data only."""
        return list(self.tables["train"]["tokens"])

    # ------------------------------------------------- inputs the model decides
    def image_size_for(self, encoder_size: tuple[int, int]) -> tuple[int, int]:
        """`data.image_size`, or (null) the image encoder's own input size."""
        return self._image_size if self._image_size is not None else encoder_size

    def set_image_preprocessing(self, preprocessing: ImagePreprocessing) -> None:
        """How images become the image encoder's input (given by mlcap.extraction from the model)."""
        self.image_preprocessing = preprocessing

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
        return list(self.tables[split]["caption"])

    def set_features(self, source: str, features: torch.Tensor) -> None:
        """Frozen-backbone outputs [rows, views, ...] of every row of a CSV, in `images(source)` order; from
        now on the splits of that CSV serve them instead of decoding images."""
        offset = 0
        for name, table in self._source_tables(source):
            self._features[name] = features[offset : offset + len(table)]
            offset += len(table)

    def set_sentences(self, split: str, states: torch.Tensor) -> None:
        """A frozen sentence encoder's output for each caption of a split, served with the row."""
        self._sentences[split] = states

    @property
    def serves_features(self) -> bool:
        return bool(self._features)

    # ------------------------------------------------------------- dataloaders
    def labels(self, split: str) -> torch.Tensor:
        """Multi-hot targets [rows, labels] of a labelled split, without building its dataset."""
        table = self.tables[split]
        if "labels" not in table:
            raise ValueError(f"the {split!r} split has no labels")
        return multi_hot(table["labels"], self.label_ids)

    def dataset(self, split: str, train: bool, view: int = 0) -> CaptionRows:
        table = self.tables[split]
        assert self.vocab is not None
        tokens, lengths = self.vocab.encode_batch(list(table["tokens"]), self.max_len)
        labels = self.labels(split) if "labels" in table else None
        sentences = self._sentences.get(split)
        if split in self._features:
            return CaptionRows(
                tokens,
                lengths,
                labels,
                features=self._features[split],
                random_view=train,
                view=view,
                sentences=sentences,
            )
        if self.image_preprocessing is None:
            raise ValueError(
                "no image preprocessing: run mlcap.extraction.prepare_inputs(datamodule, net) first"
            )
        pre = self.image_preprocessing
        transform = image_transform(pre.size, pre.mean, pre.std, train=train, interpolation=pre.interpolation)
        return CaptionRows(
            tokens,
            lengths,
            labels,
            image_paths=list(table["path"]),
            transform=transform,
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
