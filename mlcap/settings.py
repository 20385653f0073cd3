"""The public settings' types, ranges and allowed values, checked before any work starts.

The YAML files under conf/ hold each key's default; this module holds what a value may be. The schemas are
structured configs (OmegaConf checks and converts the types); ranges, choices and combinations are checked
here because OmegaConf has no such constraints. `model_settings` gives the model config's own knobs as a
typed, checked `ModelSchema`: what the model is built from. `validate()` runs on every composed train config: in the
Hydra callback of a single run, in the sweeper for every job of a sweep before any job starts, and in
`train()`. Torch-free, so it costs nothing before the first job.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mlcap.captioning import is_captioner
from mlcap.config_files import group_options
from mlcap.models.presets import PRESETS

__all__ = ["PUBLIC_KEYS", "ModelSchema", "SettingsError", "model_settings", "validate"]


class SettingsError(ValueError):
    """A setting with a value it may not take; the message names the key, the value and what is allowed."""


def knob(
    *,
    choices: tuple[Any, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A schema field: its type comes from the annotation, its default from the YAML (MISSING here)."""
    limits = {"choices": choices, ">=": ge, ">": gt, "<=": le, "<": lt}
    return field(default=MISSING, metadata={k: v for k, v in limits.items() if v is not None})


# numpy's and so Lightning's seed_everything's largest seed (2**32 - 1).
MAX_SEED = 2**32 - 1

# The built-in image encoders (`weights: null`): the torch-free list that mlcap.models.image_encoders builds.
IMAGE_PRESETS = PRESETS


@dataclass
class ImageEncoderSchema:
    # A built-in preset's name (weights null), or any timm model's (weights hub | none | <file>): see
    # _check_image_encoder; build_backbone() in mlcap.models.image_encoders builds both.
    name: str = knob()
    weights: str | None = knob()
    pretrained: bool = knob()
    freeze: bool = knob()
    dropout: float = knob(ge=0.0, lt=1.0)
    trainable_blocks: int = knob(ge=0)
    label_attention: bool = knob()


RNN, SENTENCE = "rnn", "sentence"
TEXT_ENCODERS = (RNN, SENTENCE, f"{RNN}+{SENTENCE}")


@dataclass
class ModelSchema:
    """The fusion model's own knobs (conf/model/fusion.yaml), typed: the model is built from this object
    (`model_settings`); its parts with alternatives (image encoder, loss, optimizer, scheduler) are nodes."""

    caption: bool = knob()  # false: the image-only model, no text at all (text_encoder is then unused)
    text_encoder: str = knob(choices=TEXT_ENCODERS)
    word_vectors: str = knob(choices=("fasttext_sg", "word2vec_sg", "word2vec_cbow", "none"))
    word_dim: int = knob(ge=1)
    hidden_dim: int = knob(ge=1)
    rnn: str = knob(choices=("gru", "lstm"))
    attention: bool = knob()
    rnn_pooling: str = knob(choices=("last", "mean"))
    # minilm (offline), a sentence-transformers name or a local directory (mlcap.models.sentence_encoder)
    sentence_model: str = knob()
    sentence_trainable_layers: int = knob(ge=0)  # at most the model's layer count: checked when it is built
    sentence_lr_scale: float = knob(gt=0.0)
    sentence_max_tokens: int = knob(ge=2)
    embed_dim: int = knob(ge=1)
    batch_norm: bool = knob()
    dropout: float = knob(ge=0.0, lt=1.0)
    aux_heads: bool = knob()
    caption_dropout: float = knob(ge=0.0, lt=1.0)
    backbone_lr_scale: float = knob(gt=0.0)

    @property
    def uses_rnn(self) -> bool:
        """Whether captions go through the RNN encoder (with word vectors)."""
        return self.caption and RNN in self.text_encoder.split("+")

    @property
    def uses_sentence_encoder(self) -> bool:
        """Whether captions go through the pretrained sentence encoder."""
        return self.caption and SENTENCE in self.text_encoder.split("+")


@dataclass
class OptimizerSchema:
    # `lr` is the top-level key (the node interpolates it); the node's other keys belong to its _target_.
    weight_decay: float = knob(ge=0.0)


# The loss's and the scheduler's own knobs, by `_target_` (the options of model/loss and model/scheduler that
# have knobs); any other key of those nodes belongs to the target and is checked when train() builds it.
@dataclass
class WeightedBCESchema:
    cap: float = knob(gt=0.0)


@dataclass
class AsymmetricLossSchema:
    gamma_neg: float = knob(ge=0.0)
    gamma_pos: float = knob(ge=0.0)
    clip: float | None = knob(ge=0.0, lt=1.0)  # 0 or null: no clipping


@dataclass
class OneCycleSchema:
    pct_start: float = knob(gt=0.0, lt=1.0)


PART_SCHEMAS: dict[str, dict[str, type]] = {
    "model.loss": {
        "mlcap.models.losses.weighted_bce": WeightedBCESchema,
        "timm.loss.AsymmetricLossMultiLabel": AsymmetricLossSchema,
    },
    "model.scheduler": {"torch.optim.lr_scheduler.OneCycleLR": OneCycleSchema},
}


@dataclass
class DataSchema:
    root: str = knob()
    batch_size: int = knob(ge=2)  # batch norm needs 2 rows a batch in training
    val_fraction: float = knob(gt=0.0, lt=1.0)
    split_seed: int = knob(ge=0, le=MAX_SEED)
    folds: int | None = knob(ge=2)  # k-fold cross-validation (mlcap.data.folds); null: one split
    fold: int = knob(ge=0)
    train_rows: int | None = knob(ge=1)
    max_len: int = knob(ge=1)
    num_workers: int = knob(ge=0)
    cache: bool = knob()
    cache_views: int = knob(ge=1, le=4)
    extract_batch_size: int = knob(ge=1)
    vocab_min_freq: int = knob(ge=1)
    eval_captions: str = knob(choices=("all", "first"))


# Validation metrics a run may pick its best checkpoint and stop by (all higher-is-better, as logged by
# mlcap.models.lit_module): the competition's samples-F1, the field's (mAP, CP ... OF1), the averaged F1s.
MONITORS = (
    "val/samples_f1",
    *(f"val/{name}" for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")),
    *(f"val/{avg}_{m}" for avg in ("micro", "macro", "weighted") for m in ("f1", "precision", "recall")),
)


@dataclass
class TrainSchema:
    seed: int = knob(ge=0, le=MAX_SEED)
    lr: float = knob(gt=0.0)
    threshold: float = knob(gt=0.0, lt=1.0)
    threshold_calibration: str = knob(choices=("none", "global", "per_class"))
    monitor: str = knob(choices=MONITORS)
    tta: bool = knob()
    ckpt_path: str | None = knob()
    threads: int | None = knob(ge=1)


@dataclass
class CaptionerSchema:
    """The captioner's own knobs (conf/model/captioner.yaml; mlcap.models.captioner): its image encoder and
    optimizer nodes are the classifier's, checked by the same schemas."""

    decoder: str = knob(choices=("gru", "transformer"))
    word_dim: int = knob(ge=1)
    hidden_dim: int = knob(ge=1)
    embed_dim: int = knob(ge=1)
    dropout: float = knob(ge=0.0, lt=1.0)
    beam_size: int = knob(ge=1)


# The captioner's validation metrics (mlcap.captioning.metrics), higher is better.
CAPTION_MONITORS = tuple(
    f"val/{name}" for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")
)


@dataclass
class CaptionTrainSchema(TrainSchema):
    monitor: str = knob(choices=CAPTION_MONITORS)


@dataclass
class TrainerSchema:
    max_epochs: int = knob(ge=1)
    min_epochs: int = knob(ge=0)


@dataclass
class PredictSchema:
    ckpt_path: str = knob()
    batch_size: int = knob(ge=1)
    num_workers: int = knob(ge=0)
    accelerator: str = knob(choices=("auto", "cpu", "gpu", "cuda"))
    tta: bool | None = knob()
    cache: bool | None = knob()


# Where each schema applies in the composed train config.
SCHEMAS: dict[str, type] = {
    "": TrainSchema,
    "data": DataSchema,
    "model": ModelSchema,
    "model.image_encoder": ImageEncoderSchema,
    "model.optimizer": OptimizerSchema,
    "trainer": TrainerSchema,
}


# The captioner's config (model=captioner): its own model knobs and monitors; no loss node.
CAPTIONER_SCHEMAS: dict[str, type] = {
    **SCHEMAS,
    "": CaptionTrainSchema,
    "model": CaptionerSchema,
}


def _public_keys() -> list[str]:
    keys = []
    for prefix, schema in SCHEMAS.items():
        keys += [f"{prefix}.{f.name}" if prefix else f.name for f in dataclasses.fields(schema)]
    return keys


# The keys a user sets (README "Config keys"); TensorBoard's HPARAMS tab shows these beside a sweep's own.
PUBLIC_KEYS: list[str] = _public_keys()


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


def _checked(node: Any, prefix: str, schema: type) -> tuple[DictConfig, dict[str, Any]]:
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


def _check_schema(cfg: DictConfig, prefix: str, schema: type) -> dict[str, Any]:
    node = OmegaConf.select(cfg, prefix, throw_on_missing=False) if prefix else cfg
    return _checked(node, prefix, schema)[1]


# Knobs added after checkpoints were written without them: such a checkpoint loads with the value that
# behaves as before.
_ADDED_KNOBS = {"caption_dropout": 0.0}


def model_settings(model: Mapping[str, Any]) -> ModelSchema:
    """The model config's own knobs (cfg.model, or a checkpoint's copy of it) as a checked, typed ModelSchema."""
    node = model if isinstance(model, DictConfig) else OmegaConf.create(dict(model))
    missing = {k: v for k, v in _ADDED_KNOBS.items() if k not in node}
    if missing:
        node = OmegaConf.merge(node, missing)
    typed, _ = _checked(node, "model", ModelSchema)
    return OmegaConf.to_object(typed)  # type: ignore[return-value]


# Keys of the model's nodes that are no knob of their schema but belong there: the parts built from
# `_target_` nodes (model/image_encoder, model/loss, model/scheduler groups; the optimizer node).
_PARTS = ("image_encoder", "loss", "optimizer", "scheduler")


def _check_unknown_keys(cfg: DictConfig, schemas: Mapping[str, type], parts: tuple[str, ...]) -> None:
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


def _check_parts(cfg: DictConfig, parts: tuple[str, ...]) -> None:
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


def _check_part_knobs(cfg: DictConfig, lr: float) -> None:
    """The chosen loss's and scheduler's own knobs (PART_SCHEMAS), and the optimizer's lr, which is `lr`."""
    for prefix, schemas in PART_SCHEMAS.items():
        node = OmegaConf.select(cfg, prefix)
        schema = schemas.get(str(node.get("_target_"))) if isinstance(node, DictConfig) else None
        if schema is not None:
            _checked(node, prefix, schema)
    optimizer_lr = OmegaConf.select(cfg, "model.optimizer.lr", default=lr)
    if optimizer_lr != lr:
        raise SettingsError(
            f"model.optimizer.lr={shown(optimizer_lr)} is not allowed: it follows lr (here {shown(lr)}); "
            f"set lr={shown(optimizer_lr)}, the one learning-rate key"
        )


def _check_paths(v: Mapping[str, Any], cfg: DictConfig) -> None:
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


def _check_image_size(value: Any) -> None:
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


def _check_image_encoder(v: Mapping[str, Any]) -> None:
    """A preset name needs `weights: null`; a timm model's weights are hub, none or an existing file."""
    name, weights = v["model.image_encoder.name"], v["model.image_encoder.weights"]
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


def _check_combinations(v: Mapping[str, Any]) -> None:
    """Settings that are each fine but do not work together."""
    _check_image_encoder(v)
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


def resolved_task_config(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """The task config (no `hydra` node) resolved as the job in `output_dir` will see it: what `validate`
    checks and what a run folder records (mlcap.runs)."""
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg.copy()
    with open_dict(task):
        task.paths.output_dir = str(Path(output_dir).absolute())
    return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]


def validate_predict(cfg: DictConfig) -> dict[str, Any]:
    """Check predict.py's own keys (the model's settings come from the checkpoint)."""
    return _check_schema(cfg, "", PredictSchema)


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
    parts = ("optimizer", "scheduler") if captioner else _PARTS[1:]
    values: dict[str, Any] = {}
    for prefix, schema in schemas.items():
        values |= _check_schema(resolved, prefix, schema)
    _check_image_size(OmegaConf.select(resolved, "data.image_size"))
    _check_unknown_keys(resolved, schemas, parts)
    _check_parts(resolved, parts)
    _check_part_knobs(resolved, values["lr"])
    _check_combinations(values)
    _check_paths(values, resolved)
    return values
