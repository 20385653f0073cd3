"""A sweep's jobs as found on disk: job folders (.hydra/ configs, metrics.json or failed.json), the sweeper's
plan for jobs that never started, and a finished job's per_class.csv; bad files are named in one ValueError.

Torch-free: the Hydra callback and `python -m mlcap.report` read sweeps without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from mlcap.runs import FAILED_FILE, LAST_CHECKPOINT, METRICS_FILE, PLAN_FILE, flatten, read_json
from mlcap.runs import varied_keys as _varied_keys

# The field's metrics (mAP; CP, CR, CF1, OP, OR, OF1 at the threshold, as ML-GCN and ASL report them) beside
# samples-F1: all in jobs.csv and settings.csv; mAP, CF1 and OF1 in report.md's tables.
FIELD = tuple(f"val_{name}" for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"))
METRICS = ("train_loss", "val_loss", "val_samples_f1", *FIELD)
FINISHED, FAILED, UNFINISHED, NOT_STARTED = "finished", "failed", "unfinished", "not started"
# A metrics.json that is not what train.py writes (empty, an F1 of 7.5): listed with the failed jobs, never
# averaged or bolded.
INVALID = "invalid results"
# A finished run's score: a classifier's val samples-F1, or a captioner's CIDEr-D (model=captioner).
_SCORES = ("val_samples_f1", "val_CIDEr-D")
_FRACTIONS = ("val_samples_f1", *FIELD)  # F1, precision, recall, mAP: within [0, 1]
_CAPTION_FRACTIONS = ("val_BLEU-1", "val_BLEU-2", "val_BLEU-3", "val_BLEU-4", "val_ROUGE-L")
_SWEEP_MARKERS = ("multirun.yaml", PLAN_FILE)  # what Hydra and the mlcap sweeper write into a sweep folder
SEED_KEY = "seed"
# Keys whose runs are repeats of one setting, aggregated as mean ± std (k-fold cross-validation: the folds).
REPEAT_KEYS = (SEED_KEY, "data.fold")


@dataclass
class JobRecord:
    """One job of a sweep as found on disk (or only in the sweep plan)."""

    name: str
    status: str
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    path: Path | None = None


def read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # OmegaConf/yaml raise many types; name the file instead
        raise ValueError(f"{path}: cannot read it as YAML ({err}); fix or delete the file") from err


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config -> {"model.hidden_dim": 128, ...} (mlcap.runs.flatten) as the report shows it: top-level
    values first, then the nested keys (jobs.csv's column order); empty mappings dropped; lists (and mappings
    inside them) as JSON text so values stay comparable."""
    top = {k: v for k, v in config.items() if not isinstance(v, Mapping)}
    flat = {**flatten(top), **flatten({k: v for k, v in config.items() if isinstance(v, Mapping)})}
    return {
        k: json.dumps(v) if isinstance(v, list | dict) else v
        for k, v in flat.items()
        if not (isinstance(v, Mapping) and not v)
    }


def _job_num(job_dir: Path) -> int | None:
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    hydra_cfg = read_yaml(hydra_yaml)  # names the file if it is broken
    if not isinstance(hydra_cfg, dict):
        return None
    num = OmegaConf.select(OmegaConf.create(hydra_cfg), "hydra.job.num", default=None)
    return num if isinstance(num, int) else None


def _load_job(job_dir: Path, sweep_dir: Path) -> JobRecord:
    config = read_yaml(job_dir / ".hydra" / "config.yaml")
    if not isinstance(config, dict):
        raise ValueError(f"{job_dir / '.hydra' / 'config.yaml'}: expected a mapping; fix or delete the file")
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in read_yaml(overrides_path) or []] if overrides_path.is_file() else []
    record = JobRecord(
        name=job_dir.relative_to(sweep_dir).as_posix() or ".",
        status=UNFINISHED,
        overrides=overrides,
        config=flat_config(config),
        path=job_dir,
    )
    if (job_dir / METRICS_FILE).is_file():
        metrics = read_json(job_dir / METRICS_FILE)
        problem = _metrics_problem(metrics)
        if problem:
            record.status = INVALID
            record.error = (
                f"{job_dir / METRICS_FILE}: {problem}; not written by a finished mlcap run? Delete it and re-run "
                "the sweep's command to run this job again"
            )
        else:
            record.status = FINISHED
            record.metrics = metrics
    elif (job_dir / FAILED_FILE).is_file():
        record.status = FAILED
        failure = read_json(job_dir / FAILED_FILE)
        record.error = str(failure.get("error", "unknown error (no 'error' in failed.json)"))
    else:
        resumable = (job_dir / LAST_CHECKPOINT).is_file()
        checkpoint = "resumes from checkpoints/last.ckpt" if resumable else "no checkpoint yet"
        record.error = f"interrupted or running; {checkpoint}"
    return record


def _metrics_problem(metrics: dict[str, Any]) -> str | None:
    """Why a metrics.json cannot be a finished run's results (keys missing, a value out of range), or None."""
    score = next((key for key in _SCORES if key in metrics), None)
    if score is None:
        return f"no {' or '.join(_SCORES)} in it"
    fractions = (*_FRACTIONS, *_CAPTION_FRACTIONS)
    for key in (
        score,
        *fractions,
        *METRICS,
        "model_size_mb",
        "wall_time_s",
    ):  # the score first: likelier fault
        value = metrics.get(key)
        if value is None and key != score:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key} is {value!r}, not a finite number"
        if key in fractions and not 0.0 <= value <= 1.0:
            return f"{key} is {value!r}, outside [0, 1]"
        if key in ("model_size_mb", "wall_time_s", "val_CIDEr-D") and value < 0:
            return f"{key} is {value!r}, below 0"
    return None


def _check_one_sweep(sweep_dir: Path) -> None:
    """A report is of one sweep: a folder holding several (multirun/ itself) would mix unrelated jobs."""
    sweeps = sorted({p.parent for marker in _SWEEP_MARKERS for p in sweep_dir.glob(f"**/{marker}")})
    others = [s for s in sweeps if s != sweep_dir]
    if others:
        shown = ", ".join(str(s) for s in sweeps[:10]) + (
            f" and {len(sweeps) - 10} more" if len(sweeps) > 10 else ""
        )
        raise ValueError(
            f"{sweep_dir} holds {len(sweeps)} sweeps ({shown}); a report is of one sweep: pass one of them, "
            f"e.g. python -m mlcap.report {others[0]}"
        )


def load_jobs(sweep_dir: str | Path) -> list[JobRecord]:
    """Every job under `sweep_dir`, in sweep order; jobs only in the sweep plan are 'not started'."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder; pass the sweep folder (e.g. multirun/table1)")
    _check_one_sweep(sweep_dir)
    job_dirs = sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml")})
    jobs = {record.name: record for record in (_load_job(d, sweep_dir) for d in job_dirs)}
    plan_path = sweep_dir / PLAN_FILE
    plan = read_json(plan_path).get("jobs") if plan_path.is_file() else []
    if not isinstance(plan, list) or not all(
        isinstance(e, dict) and {"name", "overrides"} <= e.keys() for e in plan
    ):
        raise ValueError(
            f"{plan_path}: 'jobs' must be a list of {{name, overrides}} entries as the mlcap sweeper "
            "writes them; delete the file to report only the job folders"
        )
    plan_order: dict[str, int] = {}
    for i, entry in enumerate(plan):
        plan_order.setdefault(entry["name"], i)
    for entry in plan:
        if entry["name"] not in jobs:
            jobs[entry["name"]] = JobRecord(
                name=entry["name"], status=NOT_STARTED, overrides=entry["overrides"]
            )
    nums = {name: _job_num(r.path) if r.path else None for name, r in jobs.items()}

    def order(name: str) -> tuple[float, float, str]:
        record = jobs[name]
        num = nums[name]
        return (plan_order.get(record.name, float("inf")), float("inf") if num is None else num, name)

    return [jobs[name] for name in sorted(jobs, key=order)]


def plan_axes(sweep_dir: Path) -> list[str]:
    """The one-at-a-time axes the sweeper planned (empty for point lists and plain multiruns)."""
    plan_path = sweep_dir / PLAN_FILE
    return [str(a) for a in read_json(plan_path).get("axes") or []] if plan_path.is_file() else []


def varied_keys(jobs: Sequence[JobRecord]) -> list[str]:
    """Config keys whose values differ between jobs (seed and data.fold excluded: the statistics run over them)."""
    return _varied_keys([j.config for j in jobs if j.config], ignore=REPEAT_KEYS)


def read_per_class(job: JobRecord) -> pd.DataFrame | None:
    """A finished job's per_class.csv (labels and averages as rows; the index as text), None if it has none."""
    path = job.path / "per_class.csv" if job.path is not None else None
    if path is None or not path.is_file():
        return None
    per_class = pd.read_csv(path, index_col=0)
    missing = {"precision", "recall", "f1", "support"} - set(per_class.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; re-run that job's training")
    per_class.index = per_class.index.astype(str)
    return per_class
