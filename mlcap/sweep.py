"""Sweep expansion for the study's tables: explicit points and one-at-a-time axes, times command-line lists.

Hydra's BasicSweeper only builds cartesian products, but the study's tables are lists of settings (Table 1)
and one-at-a-time grids around the best model (Table 4). The expansion lives here as pure functions so it
can be tested without running Hydra; `hydra_plugins.mlcap_sweeper.MlcapSweeper` wires it into Hydra and
names each job's folder after its settings (so re-running a sweep finds its jobs again, in any order); a
folder that holds a run of another config is refused (`check_jobs`, under the rules of `mlcap.runs`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, QuotedString
from omegaconf import DictConfig, OmegaConf

from mlcap.runs import CONFIG_FILE, PLAN_FILE, same_value, write_json

__all__ = [
    "PLAN_FILE",
    "SweepJob",
    "bare_key",
    "check_jobs",
    "command_line_lists",
    "expand_sweep",
    "format_value",
    "job_name",
    "job_overrides",
    "one_at_a_time",
    "sweep_points",
    "write_plan",
]

BASE_NAME = "base"
_MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")  # unquoted in Hydra and a shell
_MISSING = object()

# One command-line override key with its alternatives, e.g. ("seed", ["seed=0", "seed=1"]).
CliList = tuple[str, list[str]]


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: the task overrides it runs with and the folder name (under hydra.sweep.dir)."""

    name: str
    overrides: list[str] = field(default_factory=list)


def bare_key(key: str) -> str:
    """`+model.x@pkg` -> `model.x`: the key two overrides must share to set the same thing."""
    return key.lstrip("+~").split("@", 1)[0]


def format_value(key: str, value: Any) -> str:
    """A point's value as Hydra override text that parses back to the same value (quoted only if needed)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}={value!r}: only finite numbers can be swept")
        text = repr(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        text = "[" + ",".join(format_value(key, v) for v in value) + "]"  # e.g. data.image_size=[224,320]
    else:
        raise ValueError(
            f"{key}={value!r}: swept values must be numbers, strings, booleans, null or lists of "
            f"numbers (got {type(value).__name__}); write mappings as separate keys"
        )
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_override(f"{key}={text}")
        same = not parsed.is_sweep_override() and parsed.value() == value
    except Exception:  # any parse failure means the text needs quoting
        same = False
    if same or not isinstance(value, str):
        return text
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def one_at_a_time(axes: Mapping[str, Sequence[Any]], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The base point ({}) and, per axis, each value that differs from the base: every distinct point once.

    `base` holds the composed config's value of each axis key (absent keys count as different), so the base
    model is run once however many axes list its value.
    """
    points: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ValueError(f"sweep axis {key!r} must be a list of values, got {values!r}")
        seen: list[Any] = []
        for value in values:
            if same_value(value, base.get(key, _MISSING)) or any(same_value(value, s) for s in seen):
                continue
            seen.append(value)
            points.append({key: value})
    return points


def sweep_points(
    points: Sequence[Mapping[str, Any]] | None,
    axes: Mapping[str, Sequence[Any]] | None,
    base: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One-at-a-time points (if axes) then explicit points, duplicates dropped; [{}] when neither is given."""
    result: list[dict[str, Any]] = one_at_a_time(axes, base or {}) if axes else []
    for point in points or []:
        if not isinstance(point, Mapping):
            raise ValueError(f"sweep point {point!r} must be a mapping of override key -> value")
        candidate = dict(point)
        if not any(_points_equal(candidate, p) for p in result):
            result.append(candidate)
    return result or [{}]


def _points_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def command_line_lists(overrides: Iterable[Override]) -> list[CliList]:
    """Parsed command-line overrides -> (key, alternatives); a later override of the same key wins.

    Mirrors `BasicSweeper.split_arguments` (which only supports discrete sweeps, i.e. comma lists, range()
    and glob() of config groups).
    """
    lists: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ValueError(
                    f"{override.input_line!r}: only comma lists, range() and glob() can be swept here "
                    "(interval sweeps need an optimising sweeper such as optuna)"
                )
            # Values as config text (`false`, `0.003`), so folder names read like the overrides users type.
            lists[key] = [f"{key}={_text(key, value)}" for value in override.sweep_iterator()]
        else:
            lists[key] = [f"{key}={_text(key, override.value(), override.get_value_element_as_str())}"]
    return list(lists.items())


def _text(key: str, value: Any, fallback: str | None = None) -> str:
    """A parsed command-line value as override text; mappings and other shapes keep the text as typed."""
    if isinstance(value, QuotedString):
        value = value.text
    try:
        return format_value(bare_key(key), value)
    except ValueError:
        if fallback is None:
            raise
        return fallback


def job_name(parts: Sequence[str]) -> str:
    """Folder name from a job's distinguishing overrides: `lr=0.0003,seed=1` -> `lr-0.0003+seed-1`.

    Readable, filesystem-safe, bounded in length, and an unquoted value of Hydra's override grammar, so a
    path copied from it (`ckpt_path=.../lr-0.0003+seed-1/checkpoints/best.ckpt`, `hydra.run.dir=...`)
    works as typed: Hydra takes `=` and `,` in a value as syntax, and `~`, `:`, `[`, spaces or quotes would
    need quoting in the shell or in Hydra, so only letters, digits and `_ . + -` remain.
    """
    if not parts:
        return BASE_NAME
    readable = "+".join(_part_name(part) for part in parts)
    name = _UNSAFE.sub("_", readable)
    ambiguous = any("+" in part.partition("=")[2] for part in parts)  # a value's `+` reads as a separator
    if name != readable or ambiguous or len(name) > _MAX_NAME:
        # Characters were replaced or the name was cut: a hash of the exact text keeps names distinct.
        text = ",".join(parts)
        name = f"{name[: _MAX_NAME - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def _part_name(override: str) -> str:
    """`model/image_encoder=small_cnn` -> `model.image_encoder-small_cnn`; a `/` of a value becomes `-`."""
    key, _, value = override.lstrip("+~").partition("=")
    return f"{key.replace('/', '.')}-{value.replace('/', '-')}"


def expand_sweep(cli: Sequence[CliList], points: Sequence[Mapping[str, Any]]) -> list[SweepJob]:
    """Every point times the cartesian product of the command-line lists, in that order.

    A point's value replaces a single-valued command-line override of the same key (the command line then
    sets the base the point varies from); a command-line *list* over a key that the points vary is
    ambiguous and raises. Folder names hold the point's overrides and the swept command-line values.
    """
    point_list = [dict(p) for p in points] or [{}]
    swept = {bare_key(key) for key, values in cli if len(values) > 1}
    for point in point_list:
        clash = sorted(swept & {bare_key(k) for k in point})
        if clash:
            raise ValueError(
                f"{', '.join(clash)} is swept on the command line and also varied by this sweep config's "
                "points/axes; drop the command-line list or choose a sweep that does not vary it"
            )
    jobs: list[SweepJob] = []
    names: dict[str, list[str]] = {}
    for point in point_list:
        point_keys = {bare_key(k) for k in point}
        point_overrides = [f"{k}={format_value(bare_key(k), v)}" for k, v in point.items()]
        for combo in itertools.product(*(values for _, values in cli)):
            kept = [o for (key, _), o in zip(cli, combo, strict=True) if bare_key(key) not in point_keys]
            swept = [o for (_, values), o in zip(cli, combo, strict=True) if len(values) > 1]
            swept_parts = sorted(
                swept, key=lambda o: bare_key(o.split("=", 1)[0])
            )  # order as typed: no matter
            overrides = kept + point_overrides
            name = job_name(point_overrides + swept_parts)
            if name in names:
                if sorted(names[name]) == sorted(overrides):
                    continue  # the same job twice (e.g. a point repeating a command-line value)
                raise ValueError(
                    f"two jobs of this sweep would share the folder {name!r}: {names[name]} and {overrides}"
                )
            names[name] = overrides
            jobs.append(SweepJob(name=name, overrides=overrides))
    return jobs


def job_overrides(job: SweepJob) -> list[str]:
    """The job's task overrides plus its folder name (a Hydra override, so not among the task's own)."""
    return [*job.overrides, f"hydra.sweep.subdir='{job.name}'"]


def check_jobs(
    sweep_dir: Path, jobs: Sequence[SweepJob], compose: Callable[[list[str]], DictConfig]
) -> list[tuple[SweepJob, str]]:
    """Every job's settings and folder, checked before any job starts: [(job, folder state)].

    A job whose config a folder of this sweep already holds goes to that folder, whatever its name (values
    reordered, spelled otherwise, or a one-value list), and a job with the config of an earlier job of this
    sweep is dropped: one config, one folder. `compose` builds a job's full config (the sweeper passes Hydra's
    config loader). One error lists every job with bad settings, or whose folder holds another config's run
    or is in use by another process; then nothing is run at all, since Hydra would rewrite that folder's
    `.hydra/` as soon as the job started.
    """
    from mlcap.runs import check_folder, folder_in_use
    from mlcap.settings import resolved_task_config, validate

    check_swept_keys(jobs, compose)
    known = _recorded_identities(sweep_dir)
    planned: list[tuple[SweepJob, str]] = []
    seen: set[str] = set()
    problems: list[str] = []
    for job in jobs:
        try:
            config = compose(job_overrides(job))
            validate(config)
            check_one_process_per_job(config)
            identity = _identity_text(resolved_task_config(config, sweep_dir / job.name))
            if identity in seen:
                continue  # the same config as an earlier job of this sweep
            seen.add(identity)
            job = SweepJob(known.get(identity, job.name), job.overrides)
            folder = sweep_dir / job.name
            if folder_in_use(folder):
                raise RuntimeError(f"another mlcap process is writing to {folder} right now")
            state = check_folder(folder, resolved_task_config(config, folder), "hydra.sweep.dir")
            planned.append((job, state))
        except ValueError as err:  # SettingsError
            problems.append(f"job {job.name}: {err}")
        except RuntimeError as err:  # RunFolderError, or the folder in use
            problems.append(str(err))
    if problems:
        raise ValueError(
            f"nothing was run: {len(problems)} of the {len(jobs)} jobs of this sweep cannot start.\n"
            + "\n".join(f"- {p}" for p in problems)
        )
    return planned


def check_swept_keys(jobs: Sequence[SweepJob], compose: Callable[[list[str]], DictConfig]) -> None:
    """A key the sweep varies that it adds (`+foo=1,2`) and that no part of the config reads (no key of the
    config composed without it, no interpolation of it) would run identical jobs presented as a comparison:
    refused before any job starts."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    varied = [
        key
        for key, seen in values.items()
        if key.startswith("+") and (len(seen) > 1 or any(not _sets(job, key) for job in jobs))
    ]
    for key in varied:
        top = bare_key(key).split(".")[0]
        job = next(job for job in jobs if _sets(job, key))
        base = compose(job_overrides(SweepJob(job.name, [o for o in job.overrides if not _sets_key(o, key)])))
        if top != "hydra" and top not in base and "${" + top not in OmegaConf.to_yaml(base):
            raise ValueError(
                f"{key} is swept ({', '.join(sorted(values[key]))}) but no part of the config reads "
                f"{bare_key(key)}: every job would compute the same run. Drop it, or sweep a key of the config "
                "(README: Config keys; without + for a key that exists)"
            )


def _sets_key(override: str, key: str) -> bool:
    return override.partition("=")[0] == key


def _sets(job: SweepJob, key: str) -> bool:
    return any(_sets_key(o, key) for o in job.overrides)


def check_one_process_per_job(config: DictConfig) -> None:
    """DDP starts processes of its own; a local launcher's job re-running its command line in every one of
    them would start the whole sweep again: refused before any job starts (SLURM starts DDP's tasks itself)."""
    strategy = str(OmegaConf.select(config, "trainer.strategy", default="") or "")
    devices = OmegaConf.select(config, "trainer.devices", default=1)
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if "ddp" in strategy and devices not in (1, "1", "auto") and "slurm" not in launcher.lower():
        raise ValueError(
            f"trainer.strategy={strategy} with trainer.devices={devices} does not mix with -m on a local launcher: "
            "run DDP jobs one at a time (without -m), or through hydra/launcher=slurm with "
            "hydra.launcher.tasks_per_node equal to trainer.devices"
        )


def _identity_text(resolved: Mapping[str, Any]) -> str:
    from mlcap.runs import run_identity

    return json.dumps(run_identity(resolved), sort_keys=True, default=str)


def _recorded_identities(sweep_dir: Path) -> dict[str, str]:
    """{identity: folder name} of the runs recorded in the sweep folder's job folders (unreadable ones skipped:
    the folder check names them)."""
    known = {}
    for record in sorted(sweep_dir.glob(f"*/{CONFIG_FILE}")):
        try:
            resolved = OmegaConf.to_container(OmegaConf.load(record))
        except Exception:  # noqa: BLE001 (yaml/OmegaConf raise many types)
            continue
        if isinstance(resolved, dict):
            known.setdefault(_identity_text(resolved), record.parent.name)
    return known


def write_plan(sweep_dir: Path, jobs: Sequence[SweepJob], axes: Sequence[str]) -> Path:
    """Record the planned jobs: the report lists those that never started, TensorBoard what varies."""
    plan = {"axes": list(axes), "jobs": [{"name": job.name, "overrides": job.overrides} for job in jobs]}
    path = sweep_dir / PLAN_FILE
    write_json(path, plan)
    return path
