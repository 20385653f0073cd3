"""Frozen-backbone features computed once per (encoder, weights, preprocessing, views, image files) and reused.

Written by hand because no library we use caches model outputs keyed by inputs with atomic, locked writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlcap.data.datasets import ImageFiles

log = logging.getLogger(__name__)

# The study's flip augmentation, as fixed views: original, horizontal, vertical, both. Dims are (C, H, W).
VIEW_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ExtractionSpec:
    """Everything cached features depend on besides the image files themselves."""

    encoder: str
    weights: str
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    views: int
    decode: str = "pil-draft"
    output: str = "pooled"  # "pooled" vectors or a "map" of the frozen bottom stages


def files_identity(paths: Sequence[Path]) -> str:
    """Hash of each file's name, size and mtime: a replaced or edited image changes the key."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{Path(path).name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class FeatureCache:
    """A folder of `.npy` feature arrays [images, views, *feature shape] (float16), one per key.

    Safe under concurrency and faults: a file lock makes concurrent runs compute a key once, and arrays are
    written to a temporary name then atomically renamed, so a run killed mid-write leaves nothing that a later
    run would trust (stale temporaries are removed under the lock).
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir).expanduser()

    def key(self, spec: ExtractionSpec, paths: Sequence[Path]) -> str:
        payload = json.dumps({"format": CACHE_FORMAT, **asdict(spec)}, sort_keys=True)
        digest = hashlib.sha256(payload.encode())
        digest.update(files_identity(paths).encode())
        return f"{spec.encoder}-{len(paths)}-{digest.hexdigest()[:24]}"

    def path(self, spec: ExtractionSpec, paths: Sequence[Path]) -> Path:
        return self.cache_dir / f"{self.key(spec, paths)}.npy"

    def _load(self, path: Path, rows: int, views: int) -> np.ndarray | None:
        if not path.exists():
            return None
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            log.warning("feature cache: ignoring unreadable %s (%s)", path, err)
            return None
        if array.ndim < 3 or array.shape[:2] != (rows, views):
            log.warning("feature cache: ignoring %s with shape %s", path, array.shape)
            return None
        return np.array(array)  # read fully: a memmap would keep the file open and read-only

    def load_or_create(
        self, spec: ExtractionSpec, paths: Sequence[Path], extract: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Features for `paths`: from the cache when present, else computed once by `extract` and stored."""
        meta = {**asdict(spec), "images": len(paths)}
        return self._stored(self.path(spec, paths), len(paths), spec.views, meta, extract)

    def load_or_create_texts(
        self, encoder_id: str, texts: Sequence[str], extract: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Embeddings [texts, 1, dim] of `texts` by the encoder `encoder_id` (its name and weight hash)."""
        digest = hashlib.sha256(f"{CACHE_FORMAT}\0{encoder_id}\n".encode())
        for text in texts:
            digest.update(text.encode())
            digest.update(b"\0")
        name = encoder_id.split("-", 1)[0]
        path = self.cache_dir / f"text-{name}-{len(texts)}-{digest.hexdigest()[:24]}.npy"
        meta = {"encoder": encoder_id, "texts": len(texts)}
        return self._stored(path, len(texts), 1, meta, lambda: np.asarray(extract())[:, None])

    def _stored(
        self, path: Path, rows: int, views: int, meta: dict, extract: Callable[[], np.ndarray]
    ) -> np.ndarray:
        cached = self._load(path, rows, views)
        if cached is not None:
            log.info("feature cache hit: %s (%d rows, no encoder pass)", path, rows)
            return cached
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            cached = self._load(path, rows, views)
            if cached is not None:
                log.info("feature cache hit after waiting for another run: %s", path)
                return cached
            for stale in self.cache_dir.glob(path.name + ".tmp-*"):
                stale.unlink(missing_ok=True)
            log.info("feature cache miss: computing %s for %d rows into %s", meta.get("encoder"), rows, path)
            features = np.asarray(extract(), dtype=np.float16)
            if features.shape[:2] != (rows, views):
                raise RuntimeError(
                    f"extractor returned shape {features.shape}, expected ({rows}, {views}, ...)"
                )
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as handle:
                np.save(handle, features)
                handle.flush()
                os.fsync(handle.fileno())
            meta = {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
            os.replace(tmp, path)
        return features


def extract_features(
    backbone: nn.Module,
    paths: Sequence[Path],
    transform: Callable,
    views: int = 4,
    batch_size: int = 64,
    num_workers: int = 2,
    device: torch.device | str = "cpu",
    draft_size: int | Sequence[int] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Backbone output of every image under each flip view, as float16 [images, views, *output shape].

    `forward` (default: `backbone` itself) computes what is stored, such as `ImageEncoder.cached_forward`.

    Decoding and resizing run in DataLoader workers, overlapped with the forward pass; channels-last memory
    and, on a GPU, half precision make the pass itself fast.
    """
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    forward = forward or backbone
    was_training = backbone.training
    backbone.eval()
    # Outside inference mode: parameters converted in it could never train afterwards (a trainable top).
    backbone.to(device=device, memory_format=torch.channels_last)
    loader = DataLoader(
        ImageFiles(paths, transform, draft_size),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    chunks: list[np.ndarray] = []
    with (
        torch.inference_mode(),
        tqdm(total=len(paths), unit="img", desc="extracting features", mininterval=2.0) as progress,
        torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"),
    ):
        for images in loader:
            images = images.to(device, non_blocking=True)
            # One forward per view at the loader's batch size: a 4x larger batch ran slower per image here.
            per_view = [
                forward((images.flip(dims) if dims else images).contiguous(memory_format=torch.channels_last))
                for dims in VIEW_FLIPS[:views]
            ]
            features = torch.stack(per_view, dim=1).float()
            chunks.append(features.cpu().numpy().astype(np.float16))
            progress.update(len(images))
    backbone.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, views, 0), dtype=np.float16)
