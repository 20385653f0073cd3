"""A sweep's jobs side by side (the default) against one after the other, on the same warm feature cache.

    python benchmarks/sweep_speed.py [--rows 24000] [--epochs 4] [--jobs 2] [override ...]

Runs the same `--jobs`-job sweep of the default model (`lr` values, a fixed number of epochs, early stopping
off) twice through train.py: `hydra.launcher.n_jobs=1` (one job at a time, each with every core) and
`hydra.launcher.n_jobs=<jobs>` (side by side, the cores split between them), after a first run that fills
the cache. Prints both wall times and their ratio. Extra arguments are train.py overrides.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LRS = ["3e-4", "1e-3", "3e-3", "1e-2", "3e-2", "1e-4", "2e-4", "5e-4"]


def sweep(work: Path, name: str, rows: int, epochs: int, jobs: int, n_jobs: int, extra: list[str]) -> float:
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        f"lr={','.join(LRS[:jobs])}",
        f"data.demo.n_train={rows}",
        "data.demo.n_test=50",
        "data.demo.image_size=32",
        "data.image_size=32",
        f"paths.cache_dir={work / 'cache'}",
        f"trainer.max_epochs={epochs}",
        f"trainer.min_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        f"hydra.launcher.n_jobs={n_jobs}",
        f"hydra.sweep.dir={work / name}",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=24_000, help="labelled demo rows (80%% train)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="jobs in the sweep (and side by side)")
    parser.add_argument("--work", type=Path, help="demo data and cache here (e.g. epoch_speed.py's --work)")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="mlcap-sweep-") as tmp:
        work = args.work or Path(tmp)
        for name in ("warm-up", "serial", "parallel"):
            shutil.rmtree(work / name, ignore_errors=True)
        sweep(work, "warm-up", args.rows, 1, 1, 1, extra)  # demo data and feature cache, not timed
        serial = sweep(work, "serial", args.rows, args.epochs, args.jobs, 1, extra)
        parallel = sweep(work, "parallel", args.rows, args.epochs, args.jobs, args.jobs, extra)
    cores = len(os.sched_getaffinity(0))
    print(
        f"{args.jobs} jobs of the default model, {args.rows} rows, {args.epochs} epochs each, {cores} cores"
    )
    print(f"one after the other ({cores} threads each): {serial:.0f} s")
    print(f"side by side ({max(1, cores // args.jobs)} thread(s) each): {parallel:.0f} s")
    print(f"speed-up side by side: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
