"""The public settings' schemas: each key's type, range or allowed values (the YAML files under conf/ hold
its default). Structured configs that OmegaConf types; `knob` records the limits OmegaConf has no place for,
which mlcap.settings_checks applies. Torch-free: what a value may be, never how it is checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


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


@dataclass
class ImageEncoderSchema:
    # The keys every image encoder class takes (conf/model/image_encoder/base.yaml). The built-in class's name
    # is a preset's (weights null) or any timm model's (weights hub | none | <file>): see _check_image_encoder;
    # build_backbone() in mlcap.models.backbones builds both. A class of one's own gives them its own meaning.
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
