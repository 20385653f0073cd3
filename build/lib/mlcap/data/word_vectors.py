"""Word vectors trained with gensim on the training captions, used to initialise the embedding layer."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import torch
from gensim.models import FastText, Word2Vec

from mlcap.data.text import PAD_ID, Vocabulary

log = logging.getLogger(__name__)

WORD_VECTOR_KINDS = ("fasttext_sg", "word2vec_sg", "word2vec_cbow", "none")

WINDOW = 5
# gensim's default of 2M hash buckets costs 800 MB at dim 100; a caption corpus has far fewer distinct
# character n-grams, so a smaller table trains much faster with few extra collisions.
FASTTEXT_BUCKETS = 200_000
# Scale of the random rows (UNK and words without a vector): small, so they start near the origin.
RANDOM_ROW_STD = 0.1


def _stable_hash(text: str) -> int:
    """Replaces gensim's default ``hash`` (salted by PYTHONHASHSEED) so vectors are reproducible."""
    return zlib.crc32(text.encode("utf-8"))


def train_word_vectors(
    token_lists: Sequence[Sequence[str]],
    vocab: Vocabulary,
    kind: str,
    dim: int,
    seed: int = 0,
    epochs: int = 10,
) -> torch.Tensor | None:
    """Train ``kind`` vectors on ``token_lists``; return a float32 ``[len(vocab), dim]`` matrix by vocab id.

    ``"none"`` returns None (the model keeps its random init). The PAD row is zero; UNK and words without a
    vector get a small seeded normal row. FastText also gives vectors to words unseen in training via
    subwords. Training uses one worker so the result is identical for the same inputs and seed.
    """
    if kind not in WORD_VECTOR_KINDS:
        raise ValueError(f"Unknown word vector kind {kind!r}; valid kinds are {', '.join(WORD_VECTOR_KINDS)}")
    if kind == "none":
        return None
    if dim < 1:
        raise ValueError(f"Word vector dim must be >= 1, got {dim}")
    if epochs < 1:
        raise ValueError(f"Word vector epochs must be >= 1, got {epochs}")
    sentences = []
    for i, tokens in enumerate(token_lists):
        if isinstance(tokens, str):
            raise TypeError(f"token_lists[{i}] is a str ({tokens!r}); pass lists of tokens")
        sentences.append(list(tokens))
    if not any(sentences):
        raise ValueError("Cannot train word vectors: every token list is empty (captions not preprocessed?)")

    common = {
        "sentences": sentences,
        "vector_size": dim,
        "window": WINDOW,
        "min_count": 1,
        "workers": 1,
        "seed": seed,
        "hashfxn": _stable_hash,
        "epochs": epochs,
    }
    if kind == "fasttext_sg":
        model = FastText(sg=1, bucket=FASTTEXT_BUCKETS, **common)
    else:
        model = Word2Vec(sg=1 if kind == "word2vec_sg" else 0, **common)
    wv = model.wv

    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=generator) * RANDOM_ROW_STD
    matrix[PAD_ID] = 0.0
    found = 0
    for idx, token in enumerate(vocab.tokens[2:], start=2):
        if kind == "fasttext_sg" or token in wv.key_to_index:
            try:
                matrix[idx] = torch.from_numpy(wv[token].copy())
            except KeyError:  # FastText word with no n-gram in the table: keep the random row
                continue
            found += 1
    log.info("%s vectors: %d of %d vocabulary words got a trained vector", kind, found, len(vocab) - 2)
    return matrix.float()
