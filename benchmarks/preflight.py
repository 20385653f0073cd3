"""Pre-flight image check vs. the feature extraction it protects, measured in one run on the same machine.

    python benchmarks/preflight.py --root ../shared/data/comp5329-sample [--rows 256] [--workers 2]

1. the pre-flight check (`check_images`: every image of train.csv and test.csv decoded at 1/8 scale in
   threads), and for comparison the old header-only probe;
2. extraction throughput of the default frozen encoder (EfficientNet-Lite0, 224 px) on `--rows` real JPEGs,
   at 4 views (training's cache) and 1 view (prediction's), scaled to the CSVs' image counts;
3. the ratio of 1 to 2 (target < 0.1), and both extrapolated linearly to the full 30,000 + 10,000 images.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlcap.data.comp5329 import check_images, read_captions_csv  # noqa: E402
from mlcap.data.datasets import image_transform  # noqa: E402
from mlcap.data.feature_cache import extract_features  # noqa: E402
from mlcap.models.image_encoders import ImageEncoder  # noqa: E402


def default_image_encoder() -> ImageEncoder:
    """The default model's image encoder, as conf/ composes it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        model = compose("train").model
    return hydra.utils.instantiate(model.image_encoder, embed_dim=model.embed_dim, num_labels=19)


def header_only(paths: list[Path]) -> float:
    """Seconds for the old probe: open each file and parse its header, no decoding."""
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.size  # noqa: B018
    return time.perf_counter() - start


def extraction_rate(encoder: ImageEncoder, paths: list[Path], views: int, size: int, workers: int) -> float:
    """Images per second through `extract_features` (decode in workers + forward per view)."""
    transform = image_transform(size, encoder.mean, encoder.std, train=False)
    start = time.perf_counter()
    extract_features(
        encoder.backbone, paths, transform, views=views, batch_size=64, num_workers=workers, draft_size=size
    )
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=str(REPO.parent / "shared/data/comp5329-sample"))
    parser.add_argument("--rows", type=int, default=256, help="images timed through extraction")
    parser.add_argument("--workers", type=int, default=2, help="extraction DataLoader workers")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    root = Path(args.root)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )

    tables = {name: read_captions_csv(root / name) for name in ("train.csv", "test.csv")}
    counts = {name: len(table) for name, table in tables.items()}
    paths = [root / "data" / i for table in tables.values() for i in table["image_id"]]
    start = time.perf_counter()
    for name, table in tables.items():
        check_images(table, root / "data", root / name)
    preflight = time.perf_counter() - start
    headers = header_only(paths)
    print(
        f"1. pre-flight decode check of {len(paths)} images: {preflight:.2f} s "
        f"({len(paths) / preflight:.0f} images/s); the old header-only probe: {headers:.2f} s"
    )

    encoder = default_image_encoder()
    sample = [root / "data" / i for i in tables["train.csv"]["image_id"][: args.rows]]
    extraction_rate(encoder, sample[:64], 1, args.image_size, args.workers)  # warm-up, not counted
    rate4 = extraction_rate(encoder, sample, 4, args.image_size, args.workers)
    rate1 = extraction_rate(encoder, sample, 1, args.image_size, args.workers)
    extraction = counts["train.csv"] / rate4 + counts["test.csv"] / rate1
    print(
        f"2. extraction on {len(sample)} JPEGs: {rate4:.1f} images/s at 4 views, {rate1:.1f} at 1 view; "
        f"for {counts['train.csv']} train images x 4 views + {counts['test.csv']} test images x 1 view: "
        f"{extraction:.0f} s"
    )
    ratio = preflight / extraction
    print(f"3. pre-flight / extraction = {ratio:.4f} (1/{1 / ratio:.0f}; target < 0.1)")
    scale = 30_000 / counts["train.csv"], 10_000 / counts["test.csv"]
    full_check = preflight * (30_000 + 10_000) / len(paths)
    full_extraction = counts["train.csv"] * scale[0] / rate4 + counts["test.csv"] * scale[1] / rate1
    print(
        f"   extrapolated to 30,000 + 10,000 images: pre-flight {full_check:.0f} s, "
        f"extraction {full_extraction / 60:.0f} min"
    )


if __name__ == "__main__":
    main()
