"""What verifying a cached feature array costs on a warm run, measured in one run on the same machine.

    python benchmarks/cache_verification.py [--rows 8000 30000] [--repeats 5]

For arrays the size of the default model's cache (float16 [rows, 4 views, 1280]; 82 MB for the sample's
8,000 training images, 307 MB for the full 30,000), written through `FeatureCache` (so with its checksum):

* a verified warm load (`FeatureCache.load_or_create`: read, SHA-256 checksum, finiteness check);
* the unverified load the cache did before (the key from every image's stat, then `np.load` of the file);
* the difference, their ratio, and the difference as a share of a warm default run (`--warm-run-s`, the
  README's measured 228 s for the sample's 8,000 rows; not re-measured here, and scaled linearly with the
  rows for larger arrays).

The values are random: verification costs the same whatever the features are. The file is read from the
page cache (warm), which is the case a warm run meets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlcap.data.feature_cache import ExtractionSpec, FeatureCache  # noqa: E402

SPEC = ExtractionSpec("efficientnet_lite0", "benchmark", (224, 224), (0.5,) * 3, (0.5,) * 3, views=4)


def best_of(repeats: int, action) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(rows: int, repeats: int, warm_run_s: float, folder: Path) -> None:
    images = folder / f"images-{rows}"
    images.mkdir()
    paths = [images / f"{i}.jpg" for i in range(rows)]
    for path in paths:
        path.touch()  # the key hashes each file: empty files are quick to hash
    features = np.random.default_rng(0).standard_normal((rows, 4, 1280)).astype(np.float16)
    cache = FeatureCache(folder / "cache")
    cache.load_or_create(SPEC, paths, lambda: features)

    def verified() -> None:
        cache.load_or_create(SPEC, paths, lambda: (_ for _ in ()).throw(AssertionError("cache miss")))

    def unverified() -> None:
        # What the cache did before checksums: compute the key (stat every image), then read the array.
        np.array(np.load(cache.path(SPEC, paths), mmap_mode="r"))

    verified()  # warm the page cache
    with_check = best_of(repeats, verified)
    without = best_of(repeats, unverified)
    extra = with_check - without
    run_s = warm_run_s * rows / 8000
    print(
        f"{rows} rows x 4 views x 1280 (float16, {features.nbytes / 1e6:.0f} MB): verified load "
        f"{with_check:.3f} s, unverified load {without:.3f} s; verification adds {extra:.3f} s "
        f"(ratio {with_check / without:.1f}x), {100 * extra / run_s:.2f}% of a {run_s:.0f} s warm run"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[8000, 30000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warm-run-s", type=float, default=228.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for rows in args.rows:
            measure(rows, args.repeats, args.warm_run_s, Path(folder))


if __name__ == "__main__":
    main()
