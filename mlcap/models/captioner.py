"""Caption generation: a decoder over the caption vocabulary conditioned on the (cached, frozen) image features.

The image side is the classifier's `ImageEncoder` (so the same feature cache serves both); its embedding sets
the decoder's first state and, for the GRU, joins every step's input word. The decoder predicts the caption's
preprocessed tokens (`mlcap.data.text`) followed by an end token, with teacher forcing in training; greedy or
beam search (`beam_size`) at inference. Several captions of one image are items of their own (the data
module's `eval_captions: all`): each trains the decoder, and the image is captioned once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from mlcap.batch import Batch
from mlcap.checkpoints import LAYOUT, LAYOUT_KEY, check_checkpoint
from mlcap.data.metadata import DataMetadata
from mlcap.data.text import PAD_ID, UNK_ID
from mlcap.errors import DivergedError
from mlcap.models.contracts import ImageEncoder
from mlcap.models.parts import build_optimizer, build_scheduler

# A decoder state: tensors whose first dimension is the batch (reordered together by beam search).
State = tuple[torch.Tensor, ...]


class GRUDecoder(nn.Module):
    """Word embedding ++ image embedding -> GRU cell -> vocabulary logits; the image sets the first state."""

    def __init__(
        self, vocab_size: int, word_dim: int, hidden_dim: int, embed_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.init = nn.Linear(embed_dim, hidden_dim)
        self.cell = nn.GRUCell(word_dim + embed_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def start(self, image: torch.Tensor) -> State:
        return (torch.tanh(self.init(image)), image)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        hidden, image = state
        words = self.dropout(self.embedding(tokens))
        hidden = self.cell(torch.cat([words, image], dim=1), hidden)
        return self.out(self.dropout(hidden)), (hidden, image)

    def forward(self, image: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits [batch, steps, vocab] for the input tokens [batch, steps]."""
        state = self.start(image)
        logits = []
        for t in range(inputs.shape[1]):
            out, state = self.step(state, inputs[:, t])
            logits.append(out)
        return torch.stack(logits, dim=1)


class TransformerDecoder(nn.Module):
    """A small causal Transformer decoder whose memory is the image embedding (one token)."""

    def __init__(
        self, vocab_size: int, word_dim: int, hidden_dim: int, embed_dim: int, dropout: float, max_steps: int
    ) -> None:
        super().__init__()
        heads = 4 if word_dim % 4 == 0 else 1
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.position = nn.Embedding(max_steps, word_dim)
        self.memory = nn.Linear(embed_dim, word_dim)
        layer = nn.TransformerDecoderLayer(
            word_dim, heads, dim_feedforward=hidden_dim, dropout=dropout, batch_first=True
        )
        self.layers = nn.TransformerDecoder(layer, num_layers=2)
        self.out = nn.Linear(word_dim, vocab_size)

    def forward(self, image: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        steps = inputs.shape[1]
        words = self.embedding(inputs) + self.position(torch.arange(steps, device=inputs.device))
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=inputs.device)
        memory = self.memory(image).unsqueeze(1)
        return self.out(self.layers(words, memory, tgt_mask=mask, tgt_is_causal=True))

    def start(self, image: torch.Tensor) -> State:
        return (image, torch.zeros(len(image), 0, dtype=torch.long, device=image.device))

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The whole prefix again (captions are short; no key/value cache needed)."""
        image, prefix = state
        prefix = torch.cat([prefix, tokens[:, None]], dim=1)
        return self(image, prefix)[:, -1], (image, prefix)


class Captioner(pl.LightningModule):
    """Image-conditioned caption decoder, built from conf/model/captioner.yaml (resolved, as `model`).

    `model` and `data` (the training data's `DataMetadata.to_dict()`) are the checkpoint's hyper-parameters,
    so a checkpoint alone rebuilds the model. Token ids: the data's vocabulary (0 padding, 1 unknown), then
    the start and end tokens. Validation logs the caption metrics of `beam_size` decoding (mlcap.captioning).
    """

    def __init__(
        self, *, model: Mapping[str, Any], data: Mapping[str, Any], load_pretrained: bool = True
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["load_pretrained"], logger=False)
        self.metadata = DataMetadata.from_dict(data)
        words = len(self.metadata.vocabulary)
        self.bos, self.eos = words, words + 1
        vocab_size = words + 2
        embed_dim = int(model["embed_dim"])
        encoder = model["image_encoder"]
        self.image_encoder: ImageEncoder = hydra.utils.instantiate(
            encoder,
            pretrained=bool(encoder["pretrained"]) and load_pretrained,
            embed_dim=embed_dim,
            num_labels=1,
        )
        args = (
            vocab_size,
            int(model["word_dim"]),
            int(model["hidden_dim"]),
            embed_dim,
            float(model["dropout"]),
        )
        self.decoder: GRUDecoder | TransformerDecoder = (
            GRUDecoder(*args)
            if model["decoder"] == "gru"
            else TransformerDecoder(*args, max_steps=self.max_steps + 1)
        )
        self.beam_size = int(model["beam_size"])
        self._generated: list[list[str]] = []

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any
    ) -> Captioner:
        check_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=True, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LAYOUT_KEY] = LAYOUT

    @property
    def max_steps(self) -> int:
        """Longest caption generated: the data's max_len tokens, then the end token."""
        return self.metadata.max_len + 1

    @property
    def net(self) -> nn.Module:
        """The whole network (train.py's size and parameter counts read `net`, as for the classifier)."""
        return self

    # ---------------------------------------------------------------- training
    def teacher_forcing(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs (start token, then the caption) and targets (the caption, then the end token)."""
        tokens = batch.tokens
        rows = torch.arange(len(tokens), device=tokens.device)
        start = torch.full((len(tokens), 1), self.bos, dtype=tokens.dtype, device=tokens.device)
        inputs = torch.cat([start, tokens], dim=1)
        targets = torch.cat([tokens, torch.zeros_like(start)], dim=1)
        targets[rows, batch.lengths] = self.eos
        # An empty caption is served as one unknown word: its target is the end token alone.
        empty = (batch.lengths == 1) & (tokens[:, 0] == UNK_ID)
        targets[empty, 0] = self.eos
        targets[empty, 1] = PAD_ID
        return inputs, targets

    def loss(self, batch: Batch) -> torch.Tensor:
        image = self.image_encoder.encode(images=batch.images, features=batch.features)[0]
        inputs, targets = self.teacher_forcing(batch)
        logits = self.decoder(image, inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise DivergedError(
                f"the training loss is {float(loss.detach())} at epoch {self.current_epoch}: training diverged "
                f"(lr={self.base_lr}); lower lr. The run stops here, so no metrics are reported for it"
            )
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch), on_epoch=True, batch_size=len(batch))
        self._generated += self.captions(batch)

    def on_validation_epoch_start(self) -> None:
        self._generated = []

    def on_validation_epoch_end(self) -> None:
        """Caption metrics of the rows generated so far (all of them, or a sanity check's first batches)."""
        from mlcap.captioning.metrics import caption_scores

        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or "val" not in getattr(datamodule, "tables", {}):
            return
        references = list(datamodule.tables["val"]["tokens"])[: len(self._generated)]
        scores = caption_scores(self._generated, references)
        self.log_dict({f"val/{name}": value for name, value in scores.items()})

    # --------------------------------------------------------------- inference
    def image_rows(self, batch: Batch) -> torch.Tensor:
        """The image embedding of each row of the batch (its first item when a row's captions are items)."""
        features = batch.features if batch.features is not None else batch.images
        assert features is not None
        if batch.groups is not None:
            first = torch.ones_like(batch.groups, dtype=torch.bool)
            first[1:] = batch.groups[1:] != batch.groups[:-1]
            features = features[first]
        if batch.features is not None:
            return self.image_encoder.encode(features=features)[0]
        return self.image_encoder.encode(images=features)[0]

    def captions(self, batch: Batch, beam_size: int | None = None) -> list[list[str]]:
        """One generated caption (tokens) per row of the batch, by beam search (`beam_size` 1: greedy)."""
        image = self.image_rows(batch)
        size = self.beam_size if beam_size is None else beam_size
        ids = self.greedy(image) if size == 1 else self.beam_search(image, size)
        return [self.decode(row) for row in ids.tolist()]

    def decode(self, ids: list[int]) -> list[str]:
        """Tokens up to the end token."""
        vocabulary = self.metadata.vocabulary
        tokens = []
        for i in ids:
            if i == self.eos:
                break
            if i < len(vocabulary) and i != PAD_ID:
                tokens.append(vocabulary[i])
        return tokens

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities; padding, unknown and start tokens are never generated."""
        logits = logits.float()
        logits[:, [PAD_ID, UNK_ID, self.bos]] = -math.inf
        return logits.log_softmax(dim=-1)

    @torch.no_grad()
    def greedy(self, image: torch.Tensor) -> torch.Tensor:
        """Ids [rows, steps] by taking the most likely token at each step."""
        state = self.decoder.start(image)
        tokens = torch.full((len(image),), self.bos, dtype=torch.long, device=image.device)
        out = []
        for _ in range(self.max_steps):
            logits, state = self.decoder.step(state, tokens)
            tokens = self._log_probs(logits).argmax(dim=-1)
            out.append(tokens)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def beam_search(self, image: torch.Tensor, beam_size: int) -> torch.Tensor:
        """Ids [rows, steps] of the most likely caption (sum of log-probabilities) among `beam_size` kept
        hypotheses per row; a hypothesis that has ended keeps its score and is padded with end tokens."""
        rows, k = len(image), beam_size
        device = image.device
        state = tuple(s.repeat_interleave(k, dim=0) for s in self.decoder.start(image))
        tokens = torch.full((rows * k,), self.bos, dtype=torch.long, device=device)
        scores = torch.full((rows, k), -math.inf, device=device)
        scores[:, 0] = 0.0  # the k copies start as one hypothesis
        history = torch.zeros(rows * k, 0, dtype=torch.long, device=device)
        ended = torch.zeros(rows * k, dtype=torch.bool, device=device)
        for _ in range(self.max_steps):
            logits, state = self.decoder.step(state, tokens)
            log_probs = self._log_probs(logits)
            # An ended hypothesis continues only with the end token, at no cost.
            log_probs[ended] = -math.inf
            log_probs[ended, self.eos] = 0.0
            vocab = log_probs.shape[-1]
            total = (scores.reshape(-1, 1) + log_probs).reshape(rows, k * vocab)
            scores, flat = total.topk(k, dim=1)
            origin = (flat // vocab + torch.arange(rows, device=device)[:, None] * k).reshape(-1)
            tokens = (flat % vocab).reshape(-1)
            state = tuple(s.index_select(0, origin) for s in state)
            history = torch.cat([history.index_select(0, origin), tokens[:, None]], dim=1)
            ended = ended.index_select(0, origin) | (tokens == self.eos)
            if bool(ended.all()):
                break
        best = scores.argmax(dim=1) + torch.arange(rows, device=device) * k
        return history.index_select(0, best)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[list[str]]:
        return self.captions(batch)

    # -------------------------------------------------------------- optimiser
    @property
    def base_lr(self) -> float:
        return float(self.hparams["model"]["optimizer"]["lr"])

    def configure_optimizers(self) -> Any:
        """model.optimizer over the trainable parameters; model.scheduler (one-cycle), if any, every step."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(
            self.hparams["model"]["optimizer"], [{"params": trainable, "lr": self.base_lr}]
        )
        scheduler = self.hparams["model"]["scheduler"]
        if scheduler is None:
            return optimizer
        schedule = build_scheduler(scheduler, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
