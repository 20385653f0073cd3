"""Time a whole `experiment=best` run, or the whole study, at the full data set's size from a cold cache.

    python benchmarks/full_size_run.py --root ../shared/data/comp5329-sample [--rows 30000] [override ...]
    python benchmarks/full_size_run.py --root ../shared/data/comp5329-sample --study [override ...]

`--study` runs `python train.py -m sweep=study` (every distinct setting of the study's Tables 1-4, one seed,
the default launcher) and prints its wall time against the 60-minute target, with each job's share.

Only the 8,000-row sample exists here, so the stand-in repeats its labelled rows under new image ids (each a
symlink to the sample's JPEG, so every image is decoded and encoded again) until there are `--rows` rows, in the
published CSV layout. Its F1 means nothing (rows repeat across the split); the wall time is the figure. Extra
arguments are passed to train.py as overrides (e.g. `trainer.max_epochs=1` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from mlcap.data.comp5329 import read_captions_csv  # noqa: E402
from mlcap.data.datamodule import split_indices  # noqa: E402


def build_stand_in(sample: Path, rows: int, target: Path) -> None:
    """`rows` labelled rows cycling through the sample's train.csv, images symlinked under fresh ids."""
    table = read_captions_csv(sample / "train.csv")
    (target / "data").mkdir(parents=True)
    lines = ["ImageID,Labels,Caption"]
    for index in range(rows):
        row = table.iloc[index % len(table)]
        image_id = f"r{index // len(table)}_{row['image_id']}"
        os.symlink((sample / "data" / row["image_id"]).resolve(), target / "data" / image_id)
        # The published layout: the caption in double quotes, inner quotes left as they are.
        lines.append(f'{image_id},{" ".join(map(str, row["labels"]))},"{row["caption"]}"')
    (target / "train.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="the COMP5329 sample (train.csv, data/)")
    parser.add_argument("--rows", type=int, default=30_000, help="rows of the stand-in (full data: 30,000)")
    parser.add_argument(
        "--study", action="store_true", help="the whole study (sweep=study), not experiment=best"
    )
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="mlcap-full-size-") as tmp:
        work = Path(tmp)
        build_stand_in(args.root.expanduser(), args.rows, work / "data")
        task = (
            ["-m", "sweep=study", f"hydra.sweep.dir={work / 'study'}"]
            if args.study
            else ["experiment=best", f"hydra.run.dir={work / 'run'}"]
        )
        command = [
            sys.executable,
            str(REPO / "train.py"),
            *task,
            "data=comp5329",
            f"data.root={work / 'data'}",
            f"paths.cache_dir={work / 'cache'}",  # cold: a cache nobody has filled
            "trainer.enable_progress_bar=false",
            *overrides,
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        runs = sorted((work / ("study" if args.study else "")).glob("*/metrics.json"))
        metrics = [json.loads(path.read_text()) | {"job": path.parent.name} for path in runs]
        val_fraction = OmegaConf.load(runs[0].parent / "config_resolved.yaml").data.val_fraction
    train_rows = len(split_indices(args.rows, val_fraction, seed=0)[0])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    what = "the study (sweep=study)" if args.study else "experiment=best"
    print(f"{what} on {args.rows} rows ({train_rows} train), cold cache, overrides {overrides or 'none'}")
    print(f"  wall time: {wall / 60:.1f} min (limit 60 min; ratio {wall / 3600:.2f})")
    for run in metrics:
        print(
            f"  {run['job']}: {run['wall_time_s'] / 60:.1f} min, {run['epochs']} epochs, {run['threads']} thread(s), "
            f"val samples-F1 {run['val_samples_f1']:.4f}, {run['model_size_mb']:.1f} MB"
        )


if __name__ == "__main__":
    main()
