"""Torch datasets over one table of rows: images (or cached features) + token ids + multi-hot labels."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mlcap.batch import Batch


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """`data.image_size` as (height, width): one number is a square, two are [height, width]."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"data.image_size must be an int or [height, width], got {image_size!r}")
    return size  # type: ignore[return-value]


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the image encoder wants its inputs to look like: the model decides it, the data applies it."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"


def image_transform(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    interpolation: str = "bilinear",
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize (the backbone's interpolation), the study's random horizontal/vertical flips when training, then
    the backbone's normalisation. No centre crop: in multi-label images objects near the border count too."""
    mode = v2.InterpolationMode(interpolation)
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.Resize(image_hw(image_size), interpolation=mode, antialias=True),
    ]
    if train:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def load_rgb(path: Path, draft_size: int | Sequence[int] | None = None) -> Image.Image:
    """Decode one image, naming the file when it cannot be read.

    With `draft_size` a JPEG is decoded directly at the smallest 1/2, 1/4 or 1/8 scale still at least that
    large (libjpeg's DCT scaling via PIL's `draft`): a COCO photo resized to 224 decodes about 3x faster.
    `draft_size` is the target size: an int or (height, width).
    """
    try:
        with Image.open(path) as image:
            if draft_size is not None:
                height, width = image_hw(draft_size)
                image.draft("RGB", (width, height))
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise OSError(
            f"cannot read image {path}: {err}. Replace or remove the file and its CSV row."
        ) from err


class ImageFiles(Dataset):
    """Just the images, for feature extraction, as (index, image, None) or, unreadable, (index, None, why).

    A file that cannot be read is returned, not raised: raised in a DataLoader worker it would reach the user
    as a long worker traceback without the CSV line; `extract_features` names it instead.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[[Image.Image], torch.Tensor],
        draft_size: int | Sequence[int] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_rgb(self.paths[index], self.draft_size)), None
        except Exception as err:  # noqa: BLE001 - any failure to decode one file is reported with its row
            cause = err.__cause__ or err
            return index, None, f"{type(cause).__name__}: {' '.join(str(cause).split())[:160]}"


def collate_images(
    items: Sequence[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[torch.Tensor | None, list[tuple[int, str]]]:
    """A batch of images and the (index, why) of any that could not be read (then the images are None)."""
    failures = [(index, why) for index, _, why in items if why is not None]
    if failures:
        return None, failures
    return torch.stack([image for _, image, _ in items]), []  # type: ignore[misc]


@dataclass(frozen=True)
class CaptionChoice:
    """Which caption(s) of a row a batch carries, when rows have several (captions stored row after row).

    `draw`: one at random per row each time the row is fetched (once an epoch, as the flip views); `first`:
    the row's first; `all`: every caption as its own item, with `Batch.groups` naming the row of each, so the
    model averages their probabilities per row.
    """

    start: torch.Tensor  # [rows] index of each row's first caption
    count: torch.Tensor  # [rows] captions per row (at least 1)
    mode: str  # draw | first | all

    def items(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption indices of the batch's items and, for `all`, the batch row of each item."""
        start, count = self.start[rows], self.count[rows]
        if self.mode == "draw":
            return start + (torch.rand(len(rows)) * count).long().clamp(max=count - 1), None
        if self.mode == "first":
            return start, None
        groups = torch.repeat_interleave(torch.arange(len(rows)), count)
        offsets = torch.arange(len(groups)) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        return start[groups] + offsets, groups


class CaptionRows(Dataset):
    """Rows with either image files (decoded on the fly) or cached backbone features of several views.

    `features` has shape [rows, views, ...]; with `random_view` each row draws one view (the cached form of
    the flip augmentation), otherwise `view` (0: the original image; others for test-time augmentation).
    `sentences` are precomputed caption states of a frozen sentence encoder, one row per caption.

    A whole batch is fetched at once (`__getitems__`, which torch's DataLoader calls with a batch sampler's
    indices): cached rows are gathered with one tensor index per field, with no Python work per row.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor | None,
        image_paths: Sequence[Path] | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        features: torch.Tensor | None = None,
        random_view: bool = False,
        draft_size: int | Sequence[int] | None = None,
        view: int = 0,
        sentences: torch.Tensor | None = None,
        captions: CaptionChoice | None = None,
    ) -> None:
        if (image_paths is None) == (features is None):
            raise ValueError("give either image_paths (with a transform) or cached features")
        self.tokens = tokens
        self.lengths = lengths
        self.labels = labels
        self.image_paths = list(image_paths) if image_paths is not None else None
        self.transform = transform
        self.features = features
        self.random_view = random_view
        self.draft_size = draft_size
        self.view = view
        self.sentences = sentences
        self.captions = captions

    def __len__(self) -> int:
        return len(self.captions.start) if self.captions is not None else len(self.tokens)

    def __getitem__(self, index: int) -> Batch:
        """A batch of one row."""
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        rows = torch.as_tensor(indices, dtype=torch.long)
        texts, groups = self.captions.items(rows) if self.captions is not None else (rows, None)
        lengths = self.lengths[texts]
        # Padding beyond the batch's longest caption carries nothing: cut it before the embedding and RNN.
        tokens = self.tokens[texts, : int(lengths.max())]
        sentences = self.sentences[texts] if self.sentences is not None else None
        base = rows
        if groups is not None:  # every caption its own item: the row's image and labels repeated
            rows = rows[groups]
        labels = self.labels[rows] if self.labels is not None else None
        if self.features is None:
            assert self.image_paths is not None and self.transform is not None
            images = torch.stack(
                [self.transform(load_rgb(self.image_paths[i], self.draft_size)) for i in base.tolist()]
            )
            images = images[groups] if groups is not None else images
            return Batch(tokens, lengths, images=images, sentences=sentences, labels=labels, groups=groups)
        views = self.features.shape[1]
        if self.random_view and views > 1:
            view = torch.randint(views, (len(rows),))
        else:
            view = torch.full((len(rows),), self.view, dtype=torch.long)
        features = self.features[rows, view]
        return Batch(tokens, lengths, features=features, sentences=sentences, labels=labels, groups=groups)


def whole_batch(batch: Batch) -> Batch:
    """The DataLoader's collate step: `CaptionRows.__getitems__` already returns the batch."""
    return batch


def worker_context(num_workers: int) -> multiprocessing.context.BaseContext | None:
    """The start method of DataLoader workers, named instead of inherited from the process.

    A joblib (loky) worker process, such as a sweep job under `hydra/launcher=joblib`, sets multiprocessing's
    global start method to 'loky', whose Popen cannot start the plain `Process` a DataLoader creates
    (`AttributeError: 'Process' object has no attribute 'env'`). The platform's own default (the first of
    `get_all_start_methods`: fork on Linux up to Python 3.13, forkserver from 3.14, spawn on macOS) is what
    the DataLoader would use anywhere else.
    """
    if num_workers == 0:
        return None
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])
