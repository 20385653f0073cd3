"""Caption preprocessing and the token vocabulary.

Preprocessing follows the study: lower-case, drop punctuation and stop words, lemmatise. Everything runs
offline: tokenisation uses nltk's ``RegexpTokenizer`` (needs no downloaded data), stop words come from
scikit-learn and lemmas from ``simplemma``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import simplemma
import torch
from nltk.tokenize import RegexpTokenizer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_ID = 0
UNK_ID = 1

# sklearn's list is a generic IR list: it also drops negations, number words (which say how many people or
# animals there are) and words that name things in COCO images ("fire" hydrant, "top", "side", "bill"...).
_KEPT_STOP_WORDS = frozenset(
    {
        # negations
        "no", "not", "nor", "never", "none", "nothing", "nobody", "noone", "without",
        # numbers
        "one", "two", "three", "four", "five", "six", "eight", "nine", "ten", "eleven", "twelve", "fifteen",
        "twenty", "forty", "fifty", "sixty", "hundred", "first", "third",
        # visual content words
        "fire", "bill", "top", "bottom", "front", "back", "side", "thick", "thin", "empty", "full", "mill",
    }
)  # fmt: skip
STOP_WORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS) - _KEPT_STOP_WORDS

# Words are runs of letters/digits, optionally joined by intra-word apostrophes ("don't", "man's"); every
# other character (punctuation, quotes, slashes, hyphens) separates words, so "boogie/body" gives two words.
_TOKENIZER = RegexpTokenizer(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`\u00b4]")
_IRREGULAR_NEGATIONS = {"can't": "can", "won't": "will", "shan't": "shall", "ain't": "be"}


def _split_clitics(token: str) -> list[str]:
    """Turn "n't" into "not" (negation carries meaning) and drop other clitics such as possessive "'s"."""
    if "'" not in token:
        return [token]
    if token in _IRREGULAR_NEGATIONS:
        return [_IRREGULAR_NEGATIONS[token], "not"]
    if token.endswith("n't"):
        return [token[:-3], "not"]
    return [token.split("'", 1)[0]]


# Hand-written fixes for simplemma 2.0 dictionary entries that are wrong for frequent caption words
# ("playing" -> "playe", "swinging" -> "swinge") or leave the verb unlemmatised ("sitting").
_LEMMA_OVERRIDES = {
    "playing": "play",
    "swinging": "swing",
    "sitting": "sit",
    "cutting": "cut",
    "busses": "bus",
    "travelling": "travel",
    "crosses": "cross",
}


@lru_cache(maxsize=200_000)
def _lemma(token: str) -> str:
    """Cached because simplemma's dictionary lookup dominates the cost and captions repeat words a lot."""
    if token in _LEMMA_OVERRIDES:
        return _LEMMA_OVERRIDES[token]
    return simplemma.lemmatize(token, lang="en").lower()


def preprocess_caption(caption: str) -> list[str]:
    """Caption -> list of lower-case lemmas without punctuation or stop words.

    Stop words are removed before and after lemmatising, so inflected stop words ("is" -> "be") go too.
    """
    if not isinstance(caption, str):
        raise TypeError(f"preprocess_caption expects a str, got {type(caption).__name__}: {caption!r}")
    text = _APOSTROPHES.sub("'", caption.lower())
    tokens: list[str] = []
    for raw in _TOKENIZER.tokenize(text):
        for word in _split_clitics(raw):
            if not word or word in STOP_WORDS:
                continue
            lemma = _lemma(word)
            if lemma and lemma not in STOP_WORDS:
                tokens.append(lemma)
    return tokens


class Vocabulary:
    """Token <-> id mapping; id 0 is padding and id 1 stands for any unknown word."""

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if len(tokens) < 2 or tokens[0] != PAD_TOKEN or tokens[1] != UNK_TOKEN:
            raise ValueError(
                f"Vocabulary tokens must start with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {tokens[:2]!r}. "
                "Build it with Vocabulary.build(...) or pass the list saved from Vocabulary.tokens."
            )
        index: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if token in index:
                raise ValueError(f"Vocabulary token {token!r} occurs twice (ids {index[token]} and {i})")
            index[token] = i
        self._tokens = tokens
        self._index = index

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Build from (training) token lists; order is frequency desc, then alphabetical, for reproducibility.

        ``max_size`` counts the two special tokens.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 (room for {PAD_TOKEN} and {UNK_TOKEN}), got {max_size}")
        counts: Counter[str] = Counter()
        for i, token_list in enumerate(token_lists):
            if isinstance(token_list, str):
                raise TypeError(
                    f"token_lists[{i}] is a str ({token_list!r}); pass lists of tokens, "
                    "e.g. [preprocess_caption(c) for c in captions]"
                )
            counts.update(token_list)
        for special in (PAD_TOKEN, UNK_TOKEN):
            counts.pop(special, None)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *words])

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    @property
    def tokens(self) -> list[str]:
        """Tokens in id order; saved in checkpoints so that ``Vocabulary(tokens)`` restores the mapping."""
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def encode(self, tokens: Sequence[str], max_len: int) -> tuple[list[int], int]:
        """Ids padded/truncated to ``max_len`` and the true length.

        An empty caption encodes as a single UNK so that packed GRU sequences always have length >= 1.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if isinstance(tokens, str):
            raise TypeError(f"encode expects a token list, got the str {tokens!r}; use preprocess_caption")
        ids = [self._index.get(t, UNK_ID) for t in tokens[:max_len]] or [UNK_ID]
        length = len(ids)
        return ids + [PAD_ID] * (max_len - length), length

    def encode_batch(
        self, token_lists: Sequence[Sequence[str]], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LongTensor ids ``[n, max_len]`` and LongTensor lengths ``[n]``."""
        encoded = [self.encode(tokens, max_len) for tokens in token_lists]
        ids = torch.tensor([e[0] for e in encoded], dtype=torch.long).reshape(len(encoded), max_len)
        lengths = torch.tensor([e[1] for e in encoded], dtype=torch.long)
        return ids, lengths

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Tokens for ids, padding removed; handy for inspecting batches."""
        return [self._tokens[i] for i in ids if i != PAD_ID]
