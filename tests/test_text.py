"""Caption preprocessing, the vocabulary and gensim word vectors."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import simplemma
import torch
from conftest import REPO

from mlcap.data import text
from mlcap.data.text import PAD_TOKEN, UNK_TOKEN, Vocabulary, preprocess_caption
from mlcap.data.word_vectors import WORD_VECTOR_KINDS, train_word_vectors

# --- preprocessing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Men riding horses on top of a green field.", ["man", "ride", "horse", "top", "green", "field"]),
        ("A young boy playing soccer on a field", ["young", "boy", "play", "soccer", "field"]),
        ('A surfer on a "boogie/body" board!', ["surfer", "boogie", "body", "board"]),
        ("The man's dog isn't sitting; it's lying.", ["man", "dog", "not", "sit", "lie"]),
        ("Two giraffes, 3 zebras & people-watching", ["two", "giraffe", "3", "zebra", "people", "watch"]),
        ("A fire hydrant with no water", ["fire", "hydrant", "no", "water"]),
        ("IS THE  CAT ON\tA   LAPTOP?", ["cat", "laptop"]),
        ("“Curly” quotes don’t break things", ["curly", "quote", "not", "break", "thing"]),
        ("", []),
        ("a the of and ...", []),
    ],
)  # fmt: skip
def test_preprocess_caption_examples(caption: str, expected: list[str]) -> None:
    assert preprocess_caption(caption) == expected


def test_preprocess_caption_output_is_clean() -> None:
    tokens = preprocess_caption("Several BUSES (red/blue) were parked -- near the station's entrance, 2015!")
    assert tokens
    assert all(t == t.lower() and t.isalnum() for t in tokens)
    assert "bus" in tokens and "buses" not in tokens
    assert not {"several", "were", "the", "be"} & set(tokens)


def test_preprocess_caption_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="expects a str"):
        preprocess_caption(float("nan"))  # type: ignore[arg-type]


def test_preprocess_looks_each_word_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """simplemma's lookup dominates preprocessing and captions repeat words: each distinct word is lemmatised
    once per process, however many captions hold it."""
    lemmatize = simplemma.lemmatize
    looked_up: list[str] = []

    def counting(token: str, lang: str) -> str:
        looked_up.append(token)
        return lemmatize(token, lang=lang)

    monkeypatch.setattr(text.simplemma, "lemmatize", counting)
    text._lemma.cache_clear()
    try:
        captions = [f"A man riding {n % 50} horses on the beach by surfboards." for n in range(1000)]
        assert preprocess_caption(captions[7]) == ["man", "ride", "7", "horse", "beach", "surfboard"]
        for caption in captions:
            preprocess_caption(caption)
    finally:
        text._lemma.cache_clear()  # no lemma looked up through the stand-in stays cached for later tests
    words = {"man", "riding", "horses", "beach", "surfboards", *map(str, range(50))}
    assert sorted(looked_up) == sorted(words)


def test_preprocess_real_sample_captions(real_sample: Path) -> None:
    with (real_sample / "train.csv").open(newline="", encoding="utf-8") as f:
        captions = [row[-1] for row in list(csv.reader(f))[1:500]]
    token_lists = [preprocess_caption(c) for c in captions]
    assert sum(map(bool, token_lists)) >= 0.99 * len(token_lists)
    vocab = Vocabulary.build(token_lists)
    assert "man" in vocab and "a" not in vocab


# --- vocabulary ------------------------------------------------------------------------------------------


def test_vocabulary_build_order_and_specials() -> None:
    vocab = Vocabulary.build([["dog", "cat"], ["cat", "bird", "ant"], ["cat", "dog"]])
    assert vocab.tokens == [PAD_TOKEN, UNK_TOKEN, "cat", "dog", "ant", "bird"]
    assert len(vocab) == 6
    assert Vocabulary.build([["b", "a", "b", "c"]], min_freq=2).tokens == [PAD_TOKEN, UNK_TOKEN, "b"]
    assert Vocabulary.build([["c", "b", "a", "a"]], max_size=4).tokens == [PAD_TOKEN, UNK_TOKEN, "a", "b"]
    # special tokens appearing in the data are not duplicated
    assert Vocabulary.build([[PAD_TOKEN, "x", UNK_TOKEN]]).tokens == [PAD_TOKEN, UNK_TOKEN, "x"]


def test_vocabulary_encode_pad_truncate_unknown_empty() -> None:
    vocab = Vocabulary.build([["cat", "cat", "dog"]])  # cat=2, dog=3
    assert vocab.encode(["cat", "dog"], max_len=4) == ([2, 3, 0, 0], 2)
    assert vocab.encode(["dog", "zebra", "cat", "dog"], max_len=3) == ([3, 1, 2], 3)
    assert vocab.encode([], max_len=3) == ([1, 0, 0], 1)
    ids, lengths = vocab.encode_batch([["cat"], [], ["dog", "cat", "cat", "dog"]], max_len=3)
    assert ids.dtype == torch.long and lengths.dtype == torch.long
    assert ids.tolist() == [[2, 0, 0], [1, 0, 0], [3, 2, 2]]
    assert lengths.tolist() == [1, 1, 3]
    ids, lengths = vocab.encode_batch([], max_len=5)
    assert ids.shape == (0, 5) and lengths.shape == (0,)


def test_vocabulary_round_trip_and_errors() -> None:
    vocab = Vocabulary.build([["b", "a", "b"]])
    restored = Vocabulary(vocab.tokens)
    assert restored.tokens == vocab.tokens
    assert restored.encode(["a", "b", "q"], 4) == vocab.encode(["a", "b", "q"], 4)
    with pytest.raises(ValueError, match=r"must start with"):
        Vocabulary(["a", PAD_TOKEN, UNK_TOKEN])
    with pytest.raises(ValueError, match="occurs twice"):
        Vocabulary([PAD_TOKEN, UNK_TOKEN, "a", "a"])
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode(["a"], 0)
    with pytest.raises(TypeError, match="preprocess_caption"):
        vocab.encode("a b", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"token_lists\[1\]"):
        Vocabulary.build([["a"], "b c"])  # type: ignore[list-item]


# --- word vectors ----------------------------------------------------------------------------------------

_CORPUS = [
    ["man", "ride", "horse", "field"],
    ["woman", "ride", "bike", "street"],
    ["dog", "play", "frisbee", "park"],
    ["cat", "sit", "laptop", "table"],
    ["man", "hold", "umbrella", "street"],
    ["two", "horse", "graze", "field"],
] * 20


@pytest.fixture(scope="module")
def vocab_with_oov() -> Vocabulary:
    # "horses" is in the vocabulary but not in the training sentences
    return Vocabulary.build([*_CORPUS, ["horses"]])


@pytest.mark.parametrize("kind", [k for k in WORD_VECTOR_KINDS if k != "none"])
def test_word_vectors_shape_and_rows(kind: str, vocab_with_oov: Vocabulary) -> None:
    matrix = train_word_vectors(_CORPUS, vocab_with_oov, kind, dim=8, seed=3, epochs=2)
    assert matrix is not None
    assert matrix.shape == (len(vocab_with_oov), 8) and matrix.dtype == torch.float32
    assert torch.count_nonzero(matrix[0]) == 0  # PAD
    assert torch.count_nonzero(matrix[1]) > 0  # UNK: random, not zero
    assert torch.isfinite(matrix).all()
    again = train_word_vectors(_CORPUS, vocab_with_oov, kind, dim=8, seed=3, epochs=2)
    assert again is not None and torch.equal(matrix, again)
    other_seed = train_word_vectors(_CORPUS, vocab_with_oov, kind, dim=8, seed=4, epochs=2)
    assert other_seed is not None and not torch.equal(matrix, other_seed)


def test_word_vectors_oov_rows(vocab_with_oov: Vocabulary) -> None:
    oov = vocab_with_oov.tokens.index("horses")
    man = vocab_with_oov.tokens.index("man")
    kw = {"dim": 8, "seed": 0, "epochs": 2}
    sg = train_word_vectors(_CORPUS, vocab_with_oov, "word2vec_sg", **kw)
    cbow = train_word_vectors(_CORPUS, vocab_with_oov, "word2vec_cbow", **kw)
    fasttext = train_word_vectors(_CORPUS, vocab_with_oov, "fasttext_sg", **kw)
    assert sg is not None and cbow is not None and fasttext is not None
    # word2vec has no vector for an unseen word: both kinds fall back to the same seeded random row
    assert torch.equal(sg[oov], cbow[oov]) and torch.equal(sg[1], cbow[1])
    assert not torch.equal(sg[man], cbow[man])
    # FastText builds one from character n-grams instead
    assert not torch.equal(fasttext[oov], sg[oov])


def test_word_vectors_none_and_errors(vocab_with_oov: Vocabulary) -> None:
    assert train_word_vectors(_CORPUS, vocab_with_oov, "none", dim=8) is None
    with pytest.raises(ValueError, match="fasttext_sg, word2vec_sg, word2vec_cbow, none"):
        train_word_vectors(_CORPUS, vocab_with_oov, "glove", dim=8)
    with pytest.raises(ValueError, match="empty"):
        train_word_vectors([[], []], vocab_with_oov, "word2vec_sg", dim=8)


_DETERMINISM_SCRIPT = """
import hashlib
from mlcap.data.text import Vocabulary
from mlcap.data.word_vectors import train_word_vectors
corpus = [["man", "ride", "horse"], ["dog", "play", "frisbee", "park"], ["cat", "sit", "laptop"]] * 10
vocab = Vocabulary.build([*corpus, ["horses"]])
for kind in ("fasttext_sg", "word2vec_sg", "word2vec_cbow"):
    m = train_word_vectors(corpus, vocab, kind, dim=6, seed=7, epochs=2)
    print(kind, hashlib.sha256(m.numpy().tobytes()).hexdigest())
"""


def test_word_vectors_deterministic_across_hash_seeds() -> None:
    """gensim seeds vectors with ``hashfxn``; Python's default ``hash`` differs per PYTHONHASHSEED."""
    # This process vs. one subprocess with a different hash seed (one subprocess keeps the test fast).
    in_process = io.StringIO()
    with contextlib.redirect_stdout(in_process):
        exec(_DETERMINISM_SCRIPT, {})
    other_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONHASHSEED": other_seed}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _DETERMINISM_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert in_process.getvalue().count("\n") == 3
    assert proc.stdout == in_process.getvalue()
