"""The study's caption encoder: word embeddings -> bidirectional GRU/LSTM -> attention pooling -> dense."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class AttentionPooling(nn.Module):
    """Additive attention over time steps (Bahdanau-style scoring), padded steps masked out.

    Written by hand: torch's MultiheadAttention wants a query, while the study scores each step on its own.
    """

    def __init__(self, dim: int, attention_dim: int | None = None) -> None:
        super().__init__()
        attention_dim = attention_dim or dim
        self.score = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(states).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.bmm(weights.unsqueeze(1), states).squeeze(1)


RNNS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNCaptionEncoder(nn.Module):
    """Token ids -> one text embedding per caption: word vectors, a bidirectional GRU (or LSTM), attention
    pooling over its states (or, without attention, `pooling`: the final states of both directions, "last",
    the study's baseline, or the mean over real tokens, "mean"), then a dense layer.

    The arguments are model.* keys of conf/model/fusion.yaml (their defaults live there); `word_vectors` is
    the initial embedding matrix [vocab_size, word_dim] (None: random).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        word_dim: int,
        hidden_dim: int,
        embed_dim: int,
        rnn: str,
        attention: bool,
        pooling: str,
        dropout: float,
        word_vectors: torch.Tensor | None,
    ) -> None:
        super().__init__()
        if rnn not in RNNS:
            raise ValueError(f"model.rnn must be one of {', '.join(RNNS)}, got {rnn!r}")
        if pooling not in ("last", "mean"):
            raise ValueError(f"model.rnn_pooling must be 'last' or 'mean', got {pooling!r}")
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        if word_vectors is not None:
            if tuple(word_vectors.shape) != (vocab_size, word_dim):
                raise ValueError(
                    f"word vectors have shape {tuple(word_vectors.shape)}, expected {(vocab_size, word_dim)}"
                )
            with torch.no_grad():
                self.embedding.weight.copy_(word_vectors)
        self.rnn = RNNS[rnn](word_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.attention = AttentionPooling(2 * hidden_dim) if attention else None
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Sequential(nn.Linear(2 * hidden_dim, embed_dim), nn.ReLU())

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.dropout(self.embedding(tokens))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, hidden = self.rnn(packed)
        states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=tokens.shape[1])
        mask = (
            torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None]
        )
        if self.attention is not None:
            pooled = self.attention(states, mask)
        elif self.pooling == "mean":
            pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:
            last = hidden[0] if isinstance(hidden, tuple) else hidden
            pooled = torch.cat([last[-2], last[-1]], dim=1)
        return self.dense(self.dropout(pooled))
