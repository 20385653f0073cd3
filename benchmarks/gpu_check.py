"""GPU check: half-precision feature extraction, end-to-end fine-tuning, prediction and a two-job GPU sweep.

`python benchmarks/gpu_check.py [--steps 300] [--out gpu_check]` on a machine with CUDA; every step runs the
real command line (train.py / predict.py) on the built-in demo data and the timings are printed at the end.
Refuses to start without CUDA (the steps would silently run on the CPU and time nothing useful).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(label: str, args: list[str], timings: dict[str, float]) -> None:
    """One command line, timed; stops the check with its output when it fails."""
    print(f"== {label}: {' '.join(args)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO, check=False)
    timings[label] = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{label} failed (exit code {result.returncode}) after {timings[label]:.0f} s")


def steps(out: Path, step_count: int) -> list[tuple[str, list[str]]]:
    """(label, train.py/predict.py arguments) of every check, in order."""
    common = [f"paths.cache_dir={out / 'cache'}", "trainer=gpu", "trainer.enable_progress_bar=false"]
    # The demo set has 2,400 training rows: batch 32 gives 75 steps an epoch, so 4 epochs are 300 steps.
    epochs = max(1, round(step_count / 75))
    return [
        ("half-precision extraction (frozen Lite0, 4 views, cold cache) + training", [
            "train.py", *common, "trainer.max_epochs=3", f"hydra.run.dir={out / 'frozen'}"]),
        ("same run folder again: skipped (finished)", [
            "train.py", *common, "trainer.max_epochs=3", f"hydra.run.dir={out / 'frozen'}"]),
        (f"end-to-end fine-tuning (freeze=false), about {epochs * 75} steps", [
            "train.py", *common, "model.image_encoder.freeze=false", "data.batch_size=32", "data.num_workers=8",
            f"trainer.max_epochs={epochs}", "trainer.min_epochs=1", f"hydra.run.dir={out / 'finetune'}"]),
        ("prediction from the fine-tuned checkpoint", [
            "predict.py", f"ckpt_path={out / 'finetune' / 'checkpoints' / 'best.ckpt'}",
            f"paths.cache_dir={out / 'cache'}", f"output={out / 'submission.csv'}",
            f"hydra.run.dir={out / 'predict'}"]),
        ("trainer=gpu sweep, two jobs", [
            "train.py", "-m", *common, "trainer.max_epochs=3", "lr=3e-4,1e-3", f"hydra.sweep.dir={out / 'sweep'}"]),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps (rounded to whole epochs)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA device is visible to torch, so there is nothing to check here; run it on a "
            "machine with a GPU (and a CUDA build of torch)"
        )
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    timings: dict[str, float] = {}
    for label, command in steps(args.out.absolute(), args.steps):
        run(label, command, timings)
    print("\n| step | seconds |\n|---|---|")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
