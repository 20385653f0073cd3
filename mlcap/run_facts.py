"""What a run records about itself in metrics.json beside its scores (times, threads, SLURM job, model size,
epochs), and how many torch threads it takes.

Torch-free at import (torch is imported where a figure needs it): the report reads `SIZE_LIMIT_MB` from here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mlcap.runs import planned_jobs

SIZE_LIMIT_MB = 100.0  # the model as stored for inference (metrics.json: model_size_mb, under_100mb)


class RunClock:
    """When a run started and how long its training and the whole run took, for metrics.json."""

    def __init__(self) -> None:
        self.start, self.start_wall = time.perf_counter(), time.time()
        self.train_seconds = 0.0

    def trained(self) -> None:
        self.train_seconds = time.perf_counter() - self.start

    def facts(self) -> dict[str, Any]:
        import torch

        return {
            "train_time_s": round(self.train_seconds, 2),
            "threads": torch.get_num_threads(),
            "started": datetime.fromtimestamp(self.start_wall).isoformat(timespec="milliseconds"),
            "finished": datetime.now().isoformat(timespec="milliseconds"),
            "wall_time_s": round(time.perf_counter() - self.start, 2),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),  # null unless the run was a SLURM job
        }


def model_facts(
    best: Any, model: Any, epochs: Sequence[Mapping[str, Any]], best_epoch: int | None
) -> dict[str, Any]:
    """The best epoch's losses (from the epoch history), the epoch count, and the best model's size and
    parameters (`best`, `model`: the best checkpoint's and the trained LightningModule, each with `.net`)."""
    from mlcap.models.fusion import inference_size_bytes

    row = next((e for e in epochs if e["epoch"] == best_epoch), {})
    size_mb = inference_size_bytes(best.net) / 1e6
    return {
        "val_loss": row.get("val/loss"),
        "train_loss": row.get("train/loss"),
        "best_epoch": best_epoch,
        "epochs": len(epochs),
        "model_size_mb": round(size_mb, 3),
        "under_100mb": size_mb <= SIZE_LIMIT_MB,
        "parameters": sum(p.numel() for p in best.net.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def slurm_job() -> str:
    """The job as squeue and scancel name it: <array>_<task> for an array's task (its SLURM_JOB_ID is its own
    number, and the first task's is the whole array's)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = os.environ["SLURM_JOB_ID"]
    return f"{array}_{task} (SLURM_JOB_ID {job})" if array and task else job


def cpu_threads(threads: int | None) -> int:
    """`threads`, else in a sweep whose launcher runs n_jobs side by side an equal share of the cores, else
    all of them (what torch picks by itself). A sweep of fewer jobs than n_jobs shares among its jobs. A
    SLURM job (hydra/launcher=slurm) takes its `cpus_per_task`: it holds them alone, and without cgroups the
    node's other cores are visible to it."""
    cores = len(os.sched_getaffinity(0))
    if threads:
        return threads
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return cores
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.launcher.get("cpus_per_task"):  # submitit's launchers: one allocation per job
        return int(hydra_cfg.launcher.cpus_per_task)
    n_jobs = int(hydra_cfg.launcher.get("n_jobs") or 1)
    side_by_side = cores if n_jobs < 0 else min(n_jobs, cores)  # joblib: -1 is one job per core
    planned = planned_jobs(Path(hydra_cfg.sweep.dir))
    if planned:
        side_by_side = min(side_by_side, planned)
    return max(1, cores // side_by_side)
