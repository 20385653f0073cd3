"""Caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D, by pycocoevalcap's pure-Python scorers.

pycocoevalcap's own pipeline first runs the Stanford PTB tokenizer (Java), and its METEOR and SPICE are Java
too. Here both candidates and references are mlcap's own preprocessed token lists
(`mlcap.data.text.preprocess_caption`: lower case, no punctuation, no stop words, lemmas), joined by spaces:
no Java is needed and the scores compare the words the models see. They are therefore not comparable with
figures published on PTB-tokenised raw captions (stop words removed makes n-grams rarer and BLEU lower).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")


def caption_scores(
    candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> dict[str, float]:
    """Corpus scores of one candidate token list per image against that image's reference token lists.

    CIDEr-D is pycocoevalcap's `Cider` (coco-caption's CIDEr-D: sigma 6 length penalty, clipped n-gram counts,
    x10), whose document frequencies come from the references given: it needs several images to mean anything
    (with one image every n-gram's idf is 0).
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} images")
    if not candidates:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    res = {i: [" ".join(c)] for i, c in enumerate(candidates)}
    gts = {i: [" ".join(r) for r in refs] or [""] for i, refs in enumerate(references)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = [*bleu, rouge, cider]
    return {name: float(value) for name, value in zip(METRIC_NAMES, scores, strict=True)}
