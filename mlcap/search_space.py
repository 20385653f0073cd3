"""What a search searches (`hparams_search=<name>`): cfg.hparams_search checked into a SearchSpec.

The search space is plain YAML mapped onto Optuna's distribution classes (`type: float | int | categorical`
with low/high/log/step or choices), which have kept their meaning since Optuna 3; sampler and pruner are
`_target_` nodes; the study lives in `storage` (SQLite in the sweep folder unless set). Every bad key is one
SearchError line, raised before any trial runs. Torch-free; optuna is imported only when a search runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

OBJECTIVE = "val_samples_f1"  # metrics.json key optimised; the job reports MONITOR each epoch
MONITOR = "val/samples_f1"


class SearchError(ValueError):
    """A search that must not start (bad space, another search's storage); one line for the user."""


@dataclass(frozen=True)
class SearchSpec:
    """cfg.hparams_search, checked: what is searched, how, and where the study lives."""

    study_name: str
    n_trials: int
    direction: str
    params: dict[str, dict[str, Any]]
    sampler: dict[str, Any] | None
    pruner: dict[str, Any] | None
    storage: str
    folds: int | None

    @classmethod
    def from_config(cls, node: DictConfig, sweep_dir: Path) -> SearchSpec:
        raw: dict[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
        known = {"study_name", "n_trials", "direction", "params", "sampler", "pruner", "storage", "folds"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SearchError(
                f"hparams_search.{unknown[0]} is not a search key; the keys are {', '.join(sorted(known))}"
            )
        n_trials = raw.get("n_trials")
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise SearchError(f"hparams_search.n_trials={n_trials!r} is not allowed: use an integer >= 1")
        direction = raw.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise SearchError(
                f"hparams_search.direction={direction!r} is not allowed: use maximize or minimize"
            )
        folds = raw.get("folds")
        if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
            raise SearchError(f"hparams_search.folds={folds!r} is not allowed: use null (one split) or >= 2")
        params = raw.get("params") or {}
        if not isinstance(params, dict) or not params:
            raise SearchError("hparams_search.params is empty: give at least one key to search")
        for key, spec in params.items():
            distribution(key, spec)  # checked now, before any trial
        storage = raw.get("storage") or f"sqlite:///{(sweep_dir / 'optuna.db').absolute()}"
        return cls(
            study_name=str(raw.get("study_name") or "search"),
            n_trials=n_trials,
            direction=direction,
            params=params,
            sampler=_target_node("sampler", raw.get("sampler")),
            pruner=_target_node("pruner", raw.get("pruner")),
            storage=storage,
            folds=folds,
        )

    def signature(self, base_identity: Mapping[str, Any]) -> dict[str, Any]:
        """What makes two commands the same search (n_trials, sampler, pruner and storage may change): the
        space, the objective, and the run identity of the config the trials vary (mlcap.runs; where files go
        and how fast they are made do not count)."""
        return {
            "params": self.params,
            "direction": self.direction,
            "objective": OBJECTIVE,
            "folds": self.folds,
            "config": {k: v for k, v in base_identity.items() if k not in self.params},
        }


def _target_node(key: str, node: Any) -> dict[str, Any] | None:
    """A `_target_` mapping, or null / `none` for none (pruner: never prune; sampler: Optuna's default)."""
    if node is None or (isinstance(node, str) and node.lower() in ("none", "null")):
        return None
    if not isinstance(node, dict) or "_target_" not in node:
        raise SearchError(
            f"hparams_search.{key}={node!r} is not allowed: give a mapping with a _target_ "
            f"(e.g. optuna.{key}s.…) or none"
        )
    return node


def distribution(key: str, spec: Any) -> Any:
    """One search-space entry as an Optuna distribution (public classes, stable since Optuna 3)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = spec.get("type") if isinstance(spec, dict) else None
    try:
        if kind == "float":
            return FloatDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        if kind == "int":
            return IntDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        if kind == "categorical":
            return CategoricalDistribution(list(spec["choices"]))
    except (KeyError, TypeError, ValueError) as err:
        raise SearchError(f"hparams_search.params.{key}={spec!r} is not allowed: {err}") from None
    raise SearchError(
        f"hparams_search.params.{key}={spec!r} is not allowed: give type: float|int (low, high, optional log "
        "and step) or type: categorical (choices)"
    )


def open_storage(url: str) -> Any:
    """Optuna's RDB storage; SQLite waits for the other processes' writes (trials report side by side)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
