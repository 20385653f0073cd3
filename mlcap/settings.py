"""The public settings' types, ranges and allowed values, checked before any work starts: the entry points.

The YAML files under conf/ hold each key's default; mlcap.settings_schema holds what a value may be (structured
configs, with the ranges and choices OmegaConf has no place for) and mlcap.settings_checks checks it.
`model_settings` gives the model config's own knobs as a typed, checked `ModelSchema`: what the model is built
from. `validate()` runs on every composed train config: in the Hydra callback of a single run, in the sweeper
for every job of a sweep before any job starts, and in `train()`. Torch-free, so it costs nothing before the
first job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mlcap.captioning import is_captioner
from mlcap.models.presets import BUILT_IN_ENCODER
from mlcap.settings_checks import (
    IMAGE_PRESETS,
    PARTS,
    SettingsError,
    check_combinations,
    check_image_size,
    check_part_knobs,
    check_parts,
    check_paths,
    check_schema,
    check_unknown_keys,
    checked,
    shown,
)
from mlcap.settings_schema import (
    CAPTIONER_SCHEMAS,
    MONITORS,
    PUBLIC_KEYS,
    SCHEMAS,
    ModelSchema,
    PredictSchema,
    knob,
)

# Importers take these from here (the entry module) wherever they are defined.
__all__ = [
    "IMAGE_PRESETS",
    "MONITORS",
    "PUBLIC_KEYS",
    "ModelSchema",
    "SettingsError",
    "knob",
    "model_settings",
    "resolved_task_config",
    "shown",
    "validate",
    "validate_predict",
]

# Knobs added after checkpoints were written without them: such a checkpoint loads with the value that
# behaves as before.
_ADDED_KNOBS = {"caption_dropout": 0.0}


def model_settings(model: Mapping[str, Any]) -> ModelSchema:
    """The model config's own knobs (cfg.model, or a checkpoint's copy of it) as a checked, typed ModelSchema."""
    node = model if isinstance(model, DictConfig) else OmegaConf.create(dict(model))
    missing = {k: v for k, v in _ADDED_KNOBS.items() if k not in node}
    if missing:
        node = OmegaConf.merge(node, missing)
    typed, _ = checked(node, "model", ModelSchema)
    return OmegaConf.to_object(typed)  # type: ignore[return-value]


def resolved_task_config(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """The task config (no `hydra` node) resolved as the job in `output_dir` will see it: what `validate`
    checks and what a run folder records (mlcap.runs)."""
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg.copy()
    with open_dict(task):
        task.paths.output_dir = str(Path(output_dir).absolute())
    return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]


def validate_predict(cfg: DictConfig) -> dict[str, Any]:
    """Check predict.py's own keys (the model's settings come from the checkpoint)."""
    return check_schema(cfg, "", PredictSchema)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check every public key of a composed train config; return them as {dotted key: value}."""
    data = cfg.get("data")
    if isinstance(data, DictConfig) and "root" in data.keys() and OmegaConf.is_missing(data, "root"):  # noqa: SIM118
        # Named before resolving: the data node's reader links `${..root}`, which cannot resolve without it.
        raise SettingsError("data.root is required (e.g. data.root=...): no value was given")
    resolved = OmegaConf.create(resolved_task_config(cfg, "<run folder>"))
    # The one branch between the models of the model group: the captioner has its own knobs and no loss.
    captioner = is_captioner(OmegaConf.select(resolved, "model"))
    schemas = CAPTIONER_SCHEMAS if captioner else SCHEMAS
    parts = ("optimizer", "scheduler") if captioner else PARTS[1:]
    values: dict[str, Any] = {}
    for prefix, schema in schemas.items():
        values |= check_schema(resolved, prefix, schema)
    check_image_size(OmegaConf.select(resolved, "data.image_size"))
    check_unknown_keys(resolved, schemas, parts)
    check_parts(resolved, parts)
    check_part_knobs(resolved, values["lr"])
    # The built-in encoder's own checks apply to its class only: any other `_target_` is a user's encoder.
    target = OmegaConf.select(resolved, "model.image_encoder._target_", default=BUILT_IN_ENCODER)
    check_combinations(values, str(target))
    check_paths(values, resolved)
    return values
