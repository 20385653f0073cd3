"""Feature-cache benchmark: prints throughputs, epoch times and their ratios on the same machine in one run.

    python benchmarks/feature_cache.py --root ../shared/data/comp5329-sample [--rows 512] [--full-run]

1. bare backbone forward on synthetic tensors vs. cache extraction on real JPEGs (target ratio >= 0.9);
2. one training epoch of the default model on cached features vs. features recomputed every step, on the
   same rows (target: cached >= 20x faster);
3. (--full-run) wall time of a whole default run on an already warm cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlcap.data.datamodule import CaptionImageDataModule  # noqa: E402
from mlcap.data.datasets import image_transform  # noqa: E402
from mlcap.data.feature_cache import extract_features  # noqa: E402
from mlcap.data.word_vectors import train_word_vectors  # noqa: E402
from mlcap.extraction import prepare_inputs  # noqa: E402
from mlcap.models.lit_module import MultiLabelClassifier  # noqa: E402

LABEL_IDS = list(range(1, 20))


@torch.inference_mode()
def bare_forward(backbone: torch.nn.Module, size: int, batch: int, batches: int) -> float:
    """Images/s of the backbone alone on random tensors (channels-last, inference mode)."""
    backbone.eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    backbone(images)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        backbone(images)
    return batch * batches / (time.perf_counter() - start)


def model_config(encoder: str) -> DictConfig:
    """The default model's config (conf/model) with another built-in image encoder."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"model.image_encoder.name={encoder}"]).model


def epoch_seconds(model: MultiLabelClassifier, loader: torch.utils.data.DataLoader) -> float:
    """Seconds for one optimisation pass over a loader (forward, backward, Adam step)."""
    optimizer = model.configure_optimizers()
    model.train()
    start = time.perf_counter()
    for batch in loader:
        loss = model.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=str(REPO.parent / "shared/data/comp5329-sample"))
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--rows", type=int, default=512, help="rows used for the throughput and epoch figures"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-run", action="store_true", help="also time a whole default run (warm cache)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )

    config = model_config(args.encoder)
    encoder = hydra.utils.instantiate(
        config.image_encoder, embed_dim=config.embed_dim, num_labels=len(LABEL_IDS)
    )
    batches = max(2, args.rows // args.batch_size)
    print(
        f"1. {args.encoder} at {args.image_size}px, batch {args.batch_size} (bare forward measured right before"
    )
    print("   each extraction, since a shared machine's speed drifts between minutes):")

    with tempfile.TemporaryDirectory() as cache_dir:
        dm = CaptionImageDataModule(
            root=args.root,
            label_ids=LABEL_IDS,
            batch_size=args.batch_size,
            image_size=args.image_size,
            num_workers=args.workers,
            cache_dir=cache_dir,
        )
        dm.setup("fit")
        paths = list(dm.tables["train"]["path"][: args.rows])
        transform = image_transform(args.image_size, encoder.mean, encoder.std, train=False)
        for views in (1, 4):
            bare = bare_forward(encoder.backbone, args.image_size, args.batch_size, batches)
            print(f"   bare forward on synthetic tensors: {bare:.1f} images/s")
            start = time.perf_counter()
            extract_features(
                encoder.backbone,
                paths,
                transform,
                views=views,
                batch_size=args.batch_size,
                num_workers=args.workers,
                draft_size=args.image_size,
            )
            seconds = time.perf_counter() - start
            rate = len(paths) * views / seconds
            print(
                f"   cache extraction, {views} view(s), {len(paths)} real JPEGs: {len(paths) / seconds:.1f} images/s"
                f" = {rate:.1f} forward passes/s; ratio to bare forward {rate / bare:.2f} (target >= 0.9)"
            )

        # 2. Same rows, same model: cached features vs. the frozen backbone recomputing them every step.
        dm.tables["train"] = dm.tables["train"].iloc[: args.rows].reset_index(drop=True)
        vectors = train_word_vectors(dm.train_token_lists, dm.vocab, config.word_vectors, config.word_dim)
        model = MultiLabelClassifier(
            model=OmegaConf.to_container(config, resolve=True),  # type: ignore[arg-type]
            data=dm.metadata().to_dict(),
            threshold=0.5,
            tta=False,
            embedding_init=vectors,
        )
        inputs = prepare_inputs(dm, model.net.image_encoder)
        dm.use_inputs(inputs)
        cached_loader = dm.train_dataloader()
        cached = min(epoch_seconds(model, cached_loader) for _ in range(2))
        # The same inputs without cached features: images are decoded, the backbone runs every step.
        dm.use_inputs(dataclasses.replace(inputs, features={}))
        recomputed = epoch_seconds(model, dm.train_dataloader())
        print(
            f"2. one epoch on {args.rows} rows: cached features {cached:.2f} s, recomputed features "
            f"{recomputed:.1f} s; cached is {recomputed / cached:.0f}x faster (target >= 20x)"
        )

    if args.full_run:
        command = [
            sys.executable,
            "train.py",
            "data=comp5329",
            f"data.root={args.root}",
            "trainer.enable_progress_bar=false",
            "hydra.run.dir=outputs/benchmark_full_run",
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        print(
            f"3. whole default run on a warm cache: {time.perf_counter() - start:.0f} s "
            "(see outputs/benchmark_full_run/metrics.json)"
        )


if __name__ == "__main__":
    main()
