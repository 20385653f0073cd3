"""The checks behind mlcap.settings.validate: one node against its schema (OmegaConf's types, then the ranges
and choices of mlcap.settings_schema), and the checks across keys (unknown keys, part nodes, combinations,
paths). Each raises SettingsError naming the key, the value and what is allowed. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlcap.config_files import group_options
from mlcap.models.presets import BUILT_IN_ENCODER, PRESETS
from mlcap.settings_schema import PART_SCHEMAS, RNN, SENTENCE


class SettingsError(ValueError):
    """A setting with a value it may not take; the message names the key, the value and what is allowed."""


# The built-in image encoders (`weights: null`): the torch-free list that mlcap.models.backbones builds.
IMAGE_PRESETS = PRESETS


def _allowed(meta: Mapping[str, Any]) -> str:
    if "choices" in meta:
        return "one of " + ", ".join("null" if c is None else str(c) for c in meta["choices"])
    return " and ".join(f"{op} {bound}" for op, bound in meta.items())


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    tests: dict[str, Callable[[Any, Any], bool]] = {
        ">=": lambda v, b: v >= b,
        ">": lambda v, b: v > b,
        "<=": lambda v, b: v <= b,
        "<": lambda v, b: v < b,
    }
    if "choices" in meta:
        return value in meta["choices"]
    return value is None or all(tests[op](value, bound) for op, bound in meta.items())


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def shown(value: Any) -> str:
    """A value as config text, as users type it: null, true/false, numbers, 'quoted strings'."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _typed(schema: type, node: Any, prefix: str) -> DictConfig:
    """The node's schema keys converted to the schema's types (OmegaConf's check), or SettingsError."""
    if not isinstance(node, DictConfig):
        raise SettingsError(f"{prefix or 'the config'} must be a mapping, got {node!r}")
    types = {f.name: f.type for f in dataclasses.fields(schema)}
    missing = [name for name in types if name not in node.keys()]  # noqa: SIM118 (`in` skips ??? values)
    if missing:
        where = f"`{prefix}`" if prefix else "the top level"
        raise SettingsError(f"{where} lacks the key(s) {', '.join(missing)}; compose from conf/train.yaml")
    subset = OmegaConf.masked_copy(node, list(types))
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), subset)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        name = str(err.full_key)
        key = f"{prefix}.{name}" if prefix else name
        value = subset._get_node(name)._value() if name in subset else "?"  # noqa: SLF001 (raw, unconverted)
        expected = _TYPE_NAMES.get(str(types.get(name)).split(" |")[0], "?")
        raise SettingsError(f"{key}={shown(value)} is not allowed: it must be {expected}") from None


def checked(node: Any, prefix: str, schema: type) -> tuple[DictConfig, dict[str, Any]]:
    """The node's schema keys typed (a structured config of `schema`) and as {dotted key: value}, each checked
    against its range or choices."""
    typed = _typed(schema, node, prefix)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if OmegaConf.is_missing(typed, f.name):
            raise SettingsError(f"{key} is required (e.g. {key}=...): no value was given")
        value, raw = typed[f.name], node[f.name]
        if str(f.type).split(" |")[0] == "bool" and raw is not None and not isinstance(raw, bool):
            # OmegaConf reads 1, "yes" and "on" as true; a run's record must hold the value as compared.
            raise SettingsError(f"{key}={shown(raw)} is not allowed: it must be true or false")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{key}={shown(value)} is not allowed: it must be a finite number")
        if not _in_range(value, f.metadata):
            raise SettingsError(f"{key}={shown(value)} is not allowed: it must be {_allowed(f.metadata)}")
        values[key] = value
    return typed, values


def check_schema(cfg: DictConfig, prefix: str, schema: type) -> dict[str, Any]:
    node = OmegaConf.select(cfg, prefix, throw_on_missing=False) if prefix else cfg
    return checked(node, prefix, schema)[1]


# Keys of the model's nodes that are no knob of their schema but belong there: the parts built from
# `_target_` nodes (model/image_encoder, model/loss, model/scheduler groups; the optimizer node).
PARTS = ("image_encoder", "loss", "optimizer", "scheduler")


def check_unknown_keys(cfg: DictConfig, schemas: Mapping[str, type], parts: tuple[str, ...]) -> None:
    """A key added to the model's config (`+model.foo=1`) would reach the constructors and fail after the data
    is read; name it now."""
    extra_keys = {"model": set(parts) | {"image_encoder", "_target_"}, "model.image_encoder": {"_target_"}}
    for prefix, extras in extra_keys.items():
        known = {f.name for f in dataclasses.fields(schemas[prefix])} | extras
        unknown = sorted(set(OmegaConf.select(cfg, prefix).keys()) - known)
        if unknown:
            raise SettingsError(
                f"{prefix}.{unknown[0]} is not a setting of {prefix}: it knows {', '.join(sorted(known - extras))}"
            )


def check_parts(cfg: DictConfig, parts: tuple[str, ...]) -> None:
    """model.loss, model.optimizer and model.scheduler are `_target_` nodes (the loss and the schedule chosen by
    config group); the optimizer and a scheduler are `_partial_`: the model calls them with what it knows."""
    for name in parts:
        key, node = f"model.{name}", OmegaConf.select(cfg, f"model.{name}")
        if name == "scheduler" and node is None:
            continue  # model/scheduler=constant
        options = group_options(f"model/{name}")
        if not isinstance(node, DictConfig) or "_target_" not in node:
            hint = f"choose it with model/{name}=<{'|'.join(options)}>" if options else "give a _target_ node"
            if isinstance(node, str) and node in options:
                hint = f"choose it with model/{name}={node} (a config group: a slash, not a dot)"
            raise SettingsError(f"{key}={shown(node)} is not allowed: {hint}")
        if name != "loss" and node.get("_partial_") is not True:
            raise SettingsError(
                f"{key}._partial_={shown(node.get('_partial_'))} is not allowed: it must be true (the model "
                "calls it with its parameter groups)"
            )


def check_part_knobs(cfg: DictConfig, lr: float) -> None:
    """The chosen loss's and scheduler's own knobs (PART_SCHEMAS), and the optimizer's lr, which is `lr`."""
    for prefix, schemas in PART_SCHEMAS.items():
        node = OmegaConf.select(cfg, prefix)
        schema = schemas.get(str(node.get("_target_"))) if isinstance(node, DictConfig) else None
        if schema is not None:
            checked(node, prefix, schema)
    optimizer_lr = OmegaConf.select(cfg, "model.optimizer.lr", default=lr)
    if optimizer_lr != lr:
        raise SettingsError(
            f"model.optimizer.lr={shown(optimizer_lr)} is not allowed: it follows lr (here {shown(lr)}); "
            f"set lr={shown(optimizer_lr)}, the one learning-rate key"
        )


def check_paths(v: Mapping[str, Any], cfg: DictConfig) -> None:
    """Files and folders a run reads, checked before any work."""
    if v["ckpt_path"] is not None and not Path(v["ckpt_path"]).expanduser().is_file():
        raise SettingsError(f"ckpt_path={v['ckpt_path']!r} is not allowed: there is no such file")
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    if cache_dir is not None:
        _check_writable(Path(str(cache_dir)), "paths.cache_dir", "(or MLCAP_CACHE_DIR)")
    root = Path(str(v["data.root"])).expanduser()
    if OmegaConf.select(cfg, "data.demo") is None and not root.is_dir():
        raise SettingsError(
            f"data.root={v['data.root']!r} is not allowed: there is no such folder; pass the folder that holds "
            "the data set's files (the demo data set is generated where data=demo says)"
        )


def _check_writable(folder: Path, key: str, also: str = "") -> None:
    """A folder a run writes to (made if absent): its nearest existing folder must be one this process may write
    to, so a read-only folder or a path under a file is named now rather than failing deep in a library."""
    path = folder.expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    where = "" if existing == path else f" ({existing} exists)"
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable (read-only folder or file system){where}"
    else:
        return
    raise SettingsError(
        f"{key}={str(folder)!r} is not allowed: {problem}; give {key}=<a folder you may write to> {also}".strip()
    )


def check_image_size(value: Any) -> None:
    """null (the encoder's own size), one positive integer (square) or [height, width]: OmegaConf 2.3 has no
    union type for this key."""
    if value is None:
        return
    sizes = list(value) if isinstance(value, list | tuple) or OmegaConf.is_list(value) else [value]
    ok = len(sizes) in (1, 2) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes
    )
    if not ok:
        raise SettingsError(
            f"data.image_size={value!r} is not allowed: it must be null, a positive integer or [height, width]"
        )


def _check_image_encoder(v: Mapping[str, Any], target: str) -> None:
    """The built-in class's (`target` presets.BUILT_IN_ENCODER): a preset name needs `weights: null`; a timm
    model's weights are hub, none or an existing file. A class of one's own gives name and weights its own
    meaning: the name only has to be there, as the feature cache keys the class's output by it."""
    name, weights = v["model.image_encoder.name"], v["model.image_encoder.weights"]
    if target != BUILT_IN_ENCODER:
        if not name:
            raise SettingsError(
                f"model.image_encoder.name='' is not allowed with model.image_encoder._target_={target}: it "
                "must name the encoder (the feature cache files its output under that name)"
            )
        return
    if weights is None and name not in IMAGE_PRESETS:
        raise SettingsError(
            f"model.image_encoder.name={name!r} is not allowed: with model.image_encoder.weights=null it must be "
            f"one of the built-in encoders {', '.join(IMAGE_PRESETS)}; for any timm model use "
            f"model/image_encoder=timm model.image_encoder.name={name}"
        )
    if not name:
        raise SettingsError("model.image_encoder.name='' is not allowed: it must name a timm model")
    if weights not in (None, "hub", "none") and not Path(weights).expanduser().is_file():
        raise SettingsError(
            f"model.image_encoder.weights={weights!r} is not allowed: it must be hub, none or the path of an "
            "existing state-dict file, and there is no such file"
        )


def check_combinations(v: Mapping[str, Any], encoder_target: str) -> None:
    """Settings that are each fine but do not work together (`encoder_target`: model.image_encoder._target_)."""
    _check_image_encoder(v, encoder_target)
    if "model.text_encoder" in v:  # the classifier's
        _check_classifier_combinations(v)
    if v["data.folds"] is not None and v["data.fold"] >= v["data.folds"]:
        raise SettingsError(
            f"data.fold={v['data.fold']} is not allowed with data.folds={v['data.folds']}: use 0..{v['data.folds'] - 1}"
        )
    if v["trainer.min_epochs"] > v["trainer.max_epochs"]:
        raise SettingsError(
            f"trainer.min_epochs={v['trainer.min_epochs']} exceeds trainer.max_epochs={v['trainer.max_epochs']}"
        )


def _check_classifier_combinations(v: Mapping[str, Any]) -> None:
    """The classifier's settings that are each fine but do not work together."""
    if v["model.sentence_model"] == "":
        raise SettingsError(
            "model.sentence_model='' is not allowed: it must be minilm, a sentence-transformers model name or "
            "a local directory"
        )
    if v["tta"]:
        cached = v["data.cache"] and v["model.image_encoder.freeze"]
        if not cached or v["data.cache_views"] < 2:
            raise SettingsError(
                "tta=true averages the cached flip views, so it needs data.cache=true, "
                "model.image_encoder.freeze=true and data.cache_views >= 2 (got data.cache="
                f"{shown(v['data.cache'])}, model.image_encoder.freeze={shown(v['model.image_encoder.freeze'])}, "
                f"data.cache_views={v['data.cache_views']}); or set tta=false"
            )
    text = v["model.text_encoder"]
    if v["model.caption_dropout"] and v["model.caption"] and SENTENCE in text.split("+"):
        raise SettingsError(
            f"model.caption_dropout={v['model.caption_dropout']} empties the RNN's captions, but "
            f"model.text_encoder={text} reads cached sentence embeddings; use model.text_encoder=rnn or "
            "model.caption_dropout=0"
        )
    if v["model.sentence_trainable_layers"] and v["model.caption"] and SENTENCE not in text.split("+"):
        raise SettingsError(
            f"model.sentence_trainable_layers={v['model.sentence_trainable_layers']} fine-tunes the sentence "
            f"encoder, but model.text_encoder={text} has none; set model.text_encoder=sentence or "
            f"{RNN}+{SENTENCE}, or the layers to 0"
        )
    if v["model.image_encoder.trainable_blocks"] and not v["model.image_encoder.freeze"]:
        raise SettingsError(
            "model.image_encoder.trainable_blocks > 0 needs model.image_encoder.freeze=true "
            "(with freeze=false the whole backbone trains already)"
        )
