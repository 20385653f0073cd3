"""Run folders: what a run leaves on disk, when a folder may be reused, and who may write to it.

A run folder is its config. `config_resolved.yaml` records the resolved config of the run that first used the
folder; a later command may skip it (finished) or resume it (interrupted) only when its own resolved config
is the same, keys in `VOLATILE_KEYS` aside. Otherwise the folder is refused before Hydra rewrites `.hydra/`,
with the keys that differ. A lock file keeps two live processes out of one folder.

Torch-free on purpose: the Hydra callback, the sweeper and the report import it before (or without) torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mlcap.errors import ExpectedError, one_line
from mlcap.settings import SettingsError, resolved_task_config, shown, validate

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
CONFIG_FILE = "config_resolved.yaml"
PLAN_FILE = "sweep_plan.json"
LOCK_FILE = ".mlcap.lock"
LAST_CHECKPOINT = "checkpoints/last.ckpt"
BEST_CHECKPOINT = "checkpoints/best.ckpt"

# Keys that may differ between the run that made a folder and a command that skips or resumes it: where files
# go and how fast they are made, never what is computed. Dotted prefixes; everything else must match.
VOLATILE_KEYS = (
    "paths",
    "logger",  # trackers record a run; they do not change what it computes
    "ckpt_path",
    "threads",
    "data.cache_dir",
    "data.num_workers",
    "data.extract_batch_size",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
_OUTPUT = "<run folder>"
_CACHE = "<cache dir>"

EMPTY, FINISHED, INTERRUPTED = "empty", "finished", "interrupted"


class RunFolderError(ExpectedError):
    """A folder that this command must not use (another config's run, or another live process)."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"attention": True}} -> {"model.attention": True}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_volatile(key: str) -> bool:
    """Whether a key may differ between runs of one folder (VOLATILE_KEYS)."""
    return any(key == v or key.startswith(f"{v}.") for v in VOLATILE_KEYS)


def _placeholders(value: Any, output_dir: str, cache_dir: str) -> Any:
    """Paths inside the run folder or the cache dir written relative to them, so a moved folder still matches."""
    if isinstance(value, str):
        return value.replace(output_dir, _OUTPUT).replace(cache_dir, _CACHE) if output_dir else value
    if isinstance(value, list):
        return [_placeholders(v, output_dir, cache_dir) for v in value]
    return value


def run_identity(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The flat keys -> values that define what a run computes (VOLATILE_KEYS dropped)."""
    paths = resolved.get("paths") or {}
    output_dir, cache_dir = str(paths.get("output_dir") or ""), str(paths.get("cache_dir") or "\0")
    return {
        key: _placeholders(value, output_dir, cache_dir)
        for key, value in flatten(resolved).items()
        if not is_volatile(key)
    }


def same_value(a: Any, b: Any) -> bool:
    """Equal as config values: 3e-4 == 0.0003, but True is not 1 and 1 is not "1"."""
    if isinstance(a, bool) != isinstance(b, bool) or isinstance(a, str) != isinstance(b, str):
        return False
    return bool(a == b)


ABSENT = "<absent>"  # the value of a key that a config lacks, when configs are compared


def varied_keys(configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ()) -> list[str]:
    """Keys (in order of first appearance) whose values differ between flat configs; a key that some lack
    differs. The one rule for what a sweep varies: its plan's overrides (sweep_varied_keys) and its jobs'
    configs (the report)."""
    keys = dict.fromkeys(key for config in configs for key in config)
    return [
        key
        for key in keys
        if key not in ignore
        and any(not same_value(c.get(key, ABSENT), configs[0].get(key, ABSENT)) for c in configs[1:])
    ]


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value there, value here) for every identity key that differs.

    A key that one side lacks and the other holds as null is the same: a key added to mlcap later with a null
    default does not change what an older run computed.
    """
    keys = list(dict.fromkeys([*old, *new]))
    pairs = [(key, old.get(key, ABSENT), new.get(key, ABSENT)) for key in keys]
    return [
        (key, there, here)
        for key, there, here in pairs
        if not same_value(there, here) and not _absent_or_null(there, here)
    ]


def _absent_or_null(there: Any, here: Any) -> bool:
    return (isinstance(there, str) and there == ABSENT and here is None) or (
        there is None and isinstance(here, str) and here == ABSENT
    )


def folder_state(folder: Path) -> str:
    """finished (a readable metrics.json), interrupted (a recorded config, no readable metrics) or empty.

    A metrics.json that is not strict JSON was not written by mlcap (its writes are atomic): the run's results
    are re-made from its checkpoints rather than trusted.
    """
    metrics = folder / METRICS_FILE
    if metrics.is_file():
        try:
            read_json(metrics)
            return FINISHED
        except ValueError as err:
            log.warning("%s; re-evaluating that run", err)
    return INTERRUPTED if (folder / CONFIG_FILE).is_file() else EMPTY


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_json(path: Path) -> dict[str, Any]:
    """A strict JSON object (NaN and Infinity refused), or ValueError naming the file."""
    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read it as strict JSON ({err}); fix or delete the file") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}; fix or delete the file")
    return data


def _describe(diffs: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    listed = [f"{key} (there {shown(old)}, here {shown(new)})" for key, old, new in diffs[:limit]]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(listed) + more


def check_folder(folder: Path, resolved: Mapping[str, Any], redirect_key: str = "hydra.run.dir") -> str:
    """The folder's state if this config may use it; RunFolderError naming the differing keys otherwise."""
    folder = Path(folder)
    if (folder / PLAN_FILE).is_file():
        raise RunFolderError(
            f"{folder} is a sweep's folder (it holds {PLAN_FILE}), not a run's: write this run elsewhere "
            f"({redirect_key}=<new folder>), or re-run that sweep with -m"
        )
    state = folder_state(folder)
    if state == EMPTY:
        return state
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE), resolve=False)
    except FileNotFoundError:
        recorded = None  # finished by an older mlcap that kept no record: nothing to compare
    except Exception as err:  # yaml/OmegaConf raise many types; name the file instead
        raise RunFolderError(
            f"{folder / CONFIG_FILE} cannot be read ({err}); delete {folder} to start this run over"
        ) from err
    if recorded is None:
        return state
    diffs = differences(run_identity(recorded), run_identity(resolved))  # type: ignore[arg-type]
    if diffs:
        verb = "a finished" if state == FINISHED else "an interrupted (resumable)"
        raise RunFolderError(
            f"{folder} holds {verb} run of another config, so this command will not skip, resume or "
            f"overwrite it. Keys that differ: {_describe(diffs)}. Write this run elsewhere "
            f"({redirect_key}=<new folder>) or delete {folder} to start over."
        )
    return state


# What only a run or a sweep leaves in its folder (mlcap's records and lock, Hydra's): a folder holding any is one.
RUN_MARKS = (
    CONFIG_FILE,
    METRICS_FILE,
    FAILED_FILE,
    LOCK_FILE,
    PLAN_FILE,
    "multirun.yaml",
    ".hydra",
    "checkpoints",
)


def check_run_folder(folder: Path, redirect_key: str = "hydra.run.dir") -> None:
    """A folder a run may write into: absent, empty, or a run's (RUN_MARKS); a file, or a folder of other files
    (the data root, a home folder), is refused before anything is written there."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunFolderError(
            f"{redirect_key}={folder} is not allowed: it is a file, not a folder; give {redirect_key}=<new folder>"
        )
    entries = sorted(entry.name for entry in folder.iterdir())
    if entries and not any((folder / mark).exists() for mark in RUN_MARKS):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise RunFolderError(
            f"{redirect_key}={folder} is not allowed: the folder holds files of no run ({shown}) and a run "
            f"writes checkpoints, logs and .hydra/ into it; give {redirect_key}=<a new or empty folder>"
        )


_HELD: dict[str, FileLock] = {}  # this process's folder locks, re-entered rather than taken twice


def lock_folder(folder: Path) -> FileLock:
    """Hold `folder` for this process (released at exit even on a crash); RunFolderError if another holds it.

    Re-entrant within a process: a single run's Hydra callback and its task both hold the run folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = str((folder / LOCK_FILE).resolve())
    lock = _HELD.get(path) or FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise RunFolderError(
            f"another mlcap process is writing to {folder} right now; wait for it to end, or write this run "
            "elsewhere (hydra.run.dir=... / hydra.sweep.dir=...)"
        ) from err
    _HELD[path] = lock
    return lock


def folder_in_use(folder: Path) -> bool:
    """Whether another live process holds `folder` (a sweep checks its job folders before launching)."""
    if not (folder / LOCK_FILE).is_file():
        return False
    try:
        lock_folder(folder).release()
    except RunFolderError:
        return True
    return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a library to write to (a plot, a CSV), renamed onto `path` when the
    block ends without error and removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: readers see the old file or the whole new one, never half."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (NaN and infinity are refused: they are not JSON), written atomically."""
    write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def planned_jobs(sweep_dir: Path) -> int:
    """How many jobs the sweeper planned for this sweep (0 if there is no plan)."""
    plan_path = sweep_dir / PLAN_FILE
    return len(json.loads(plan_path.read_text()).get("jobs") or []) if plan_path.is_file() else 0


def sweep_varied_keys(sweep_dir: Path) -> list[str]:
    """Override keys whose values differ between the jobs the sweeper planned (empty if there is no plan)."""
    plan_path = sweep_dir / PLAN_FILE
    if not plan_path.is_file():
        return []
    jobs = json.loads(plan_path.read_text()).get("jobs") or []
    return varied_keys([_override_values(job.get("overrides", [])) for job in jobs])


def _override_values(overrides: Sequence[str]) -> dict[str, str]:
    """["+model.x=1", "lr=0.1"] -> {"model.x": "1", "lr": "0.1"}: a job's overrides as a flat config."""
    pairs = (override.partition("=") for override in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def latest_finished_checkpoint(root: Path) -> Path | None:
    """The newest `checkpoints/best.ckpt` under `root` whose run finished (metrics.json beside it)."""
    found = [p for p in root.glob(f"**/{BEST_CHECKPOINT}") if (p.parent.parent / METRICS_FILE).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def launched_rank() -> int:
    """The global rank a launcher gave this process (Lightning's DDP children, SLURM, torchrun), else 0.

    The environment variables Lightning itself reads; read here without importing torch.
    """
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


class RunFolderCallback(Callback):
    """Hydra callback for single runs: check settings and the run folder, then lock it, before Hydra writes it.

    Hydra saves `.hydra/config.yaml` before any job callback or task code runs, so the check must happen in
    `on_run_start`; sweeps are checked by the mlcap sweeper for every job before any is launched. Hydra turns
    a callback's exceptions into warnings and goes on, so a refusal leaves through SystemExit (exit code 1).
    """

    def __init__(self) -> None:
        self._lock: FileLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir)).absolute()
        if launched_rank() != 0:
            return  # a DDP process that rank 0 started (or SLURM): rank 0 checked and locked this folder
        try:
            validate(config)
            check_run_folder(folder)  # before the lock file: nothing is written into another kind of folder
            self._lock = lock_folder(folder)
            state = check_folder(folder, resolved_task_config(config, folder))
        except (SettingsError, RunFolderError) as err:
            raise SystemExit(f"error: {one_line(err)}") from None
        except OSError as err:  # the folder cannot be made or locked (under a file, read-only, disk full)
            raise SystemExit(f"error: hydra.run.dir={folder} cannot be written: {one_line(err)}") from None
        if state != EMPTY:  # the folder's own .hydra/ stays the record of the command that made it
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
            log.info("%s holds a %s run of the same config", folder, state)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._lock is not None:
            self._lock.release()
