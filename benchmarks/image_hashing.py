"""What the feature cache's content key costs: hashing every image against the stat-only key it replaced.

    python benchmarks/image_hashing.py [--images ../shared/data/comp5329-sample/data] [--limit 8000]

The cache key holds each image's name and content hash (BLAKE2b), remembered in `<cache>/image-hashes.json`
by the file's (device, inode, size, mtime, ctime); before issue 19 it held name, size and mtime only, so an
image rewritten with its size and mtime restored was a stale hit. Measured here, on the same files:

* stat-only: the old key (one `os.stat` per image);
* cold: no remembered hashes and the images evicted from the page cache (`posix_fadvise(DONTNEED)`), as on
  the first run after a reboot or a copy; every image is read from disk and hashed;
* page cache warm, no index: a new cache folder on a machine that has just read the images;
* warm: the remembered hashes (index read from disk, one `os.stat` per image), what every later run pays;

each also extrapolated linearly to the 30,000 images of the full data set.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlcap.data.feature_cache import FileHashes, files_identity  # noqa: E402

FULL = 30_000


def stat_only(paths: list[Path]) -> str:
    """The key's file part before issue 19: name, size and mtime."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def evict(paths: list[Path]) -> None:
    """Drop the images from the page cache, so the next read comes from disk."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(
    action: Callable[[], object], repeats: int = 1, before: Callable[[], object] | None = None
) -> float:
    best = float("inf")
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared/data/comp5329-sample/data")
    parser.add_argument("--limit", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    if not paths:
        raise SystemExit(f"error: no .jpg under {args.images}; pass --images <folder>")
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} images, {size / 1e6:.1f} MB, under {args.images}")
    with tempfile.TemporaryDirectory() as folder:
        index = Path(folder) / "image-hashes.json"

        def fresh() -> None:
            index.unlink(missing_ok=True)

        def hashed() -> None:
            files_identity(paths, FileHashes(index))

        rows = [
            ("stat-only key (before)", timed(lambda: stat_only(paths), args.repeats)),
            ("content key, cold (disk)", timed(hashed, 2, before=lambda: (fresh(), evict(paths)))),
            ("content key, page cache warm, no index", timed(hashed, args.repeats, before=fresh)),
        ]
        hashed()
        rows.append(("content key, warm (remembered hashes)", timed(hashed, args.repeats)))
        print(
            f"index {index.stat().st_size / 1e6:.2f} MB ({index.stat().st_size / len(paths):.0f} B an image)"
        )
    scale = FULL / len(paths)
    print(f"| | {len(paths):,} images | {FULL:,} images (extrapolated) |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} s | {seconds * scale:.2f} s |")


if __name__ == "__main__":
    main()
