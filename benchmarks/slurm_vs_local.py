"""The same sweep run by two launchers, job by job: val samples-F1, threads, SLURM job and wall time.

    python benchmarks/slurm_vs_local.py <local sweep folder> <slurm sweep folder> [--log-local L --log-slurm S]

Each job is found by its name in the sweep's sweep_plan.json; a job without metrics.json is shown as missing.
The --log options take the files holding each command's `wall_s=<seconds>` line (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _jobs(sweep_dir: Path) -> dict[str, dict | None]:
    plan = json.loads((sweep_dir / "sweep_plan.json").read_text())["jobs"]
    found = {}
    for job in plan:
        metrics = sweep_dir / job["name"] / "metrics.json"
        found[job["name"]] = json.loads(metrics.read_text()) if metrics.is_file() else None
    return found


def _wall(log: Path | None) -> str:
    match = re.search(r"wall_s=(\d+)", log.read_text()) if log and log.is_file() else None
    return f"{int(match.group(1)) / 60:.1f} min" if match else "not finished"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("local", type=Path)
    parser.add_argument("slurm", type=Path)
    parser.add_argument("--log-local", type=Path)
    parser.add_argument("--log-slurm", type=Path)
    args = parser.parse_args()
    local, slurm = _jobs(args.local), _jobs(args.slurm)
    print(
        "| setting | val F1 local | val F1 SLURM | difference | threads (local, SLURM) | SLURM job | job wall s (local, SLURM) |"
    )
    print("|---|---|---|---|---|---|---|")
    diffs = []
    for name in local:
        a, b = local[name], slurm.get(name)
        if a is None or b is None:
            print(f"| {name} | {a and a['val_samples_f1']} | {b and b['val_samples_f1']} | missing | | | |")
            continue
        diff = abs(a["val_samples_f1"] - b["val_samples_f1"])
        diffs.append(diff)
        print(
            f"| {name} | {a['val_samples_f1']:.4f} | {b['val_samples_f1']:.4f} | {diff:.1e} | "
            f"{a['threads']}, {b['threads']} | {b.get('slurm_job_id')} | {a['wall_time_s']:.0f}, {b['wall_time_s']:.0f} |"
        )
    print(f"\n{len(diffs)} settings in both; largest |difference| {max(diffs, default=float('nan')):.2e}")
    print(f"sweep wall time: local {_wall(args.log_local)}, SLURM {_wall(args.log_slurm)}")


if __name__ == "__main__":
    main()
