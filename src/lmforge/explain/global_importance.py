"""Corpus-level token importance: which words drive each label across a dataset.

A global explanation built from local ones (Zhao et al. 2023, section 3.1.2 / 3.2: aggregating
feature attributions over a corpus, as in SP-LIME's global importance, Ribeiro et al. 2016, section 4).
Every text is explained for the label the model predicts; each word's score is added to that label's
tally for the word (lower-cased). A word's importance for a label is the sum of its scores over the
corpus: frequent and strong words rank first, which is what surfaces a shortcut (a token that
predicts the label in the training data and carries no meaning).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.explain.attribution import Explainer


@dataclass
class TokenImportance:
    word: str
    total: float  # sum of the word's scores over the texts predicted as the label
    count: int  # occurrences in those texts
    mean: float


def token_importance(
    explainer: Explainer,
    texts: Sequence[str],
    method: str = "occlusion",
    min_count: int = 3,
    top: int = 20,
    progress: bool = False,
) -> dict[str, list[TokenImportance]]:
    """Label -> its `top` words by total attribution (words seen at least `min_count` times)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for a in explainer.explain(texts, method, progress=progress):
        for word, score in zip(a.words, a.word_scores):
            key = word.lower()
            totals[a.target_label][key] += float(score)
            counts[a.target_label][key] += 1
    ranked = {}
    for label in explainer.labels:
        rows = [
            TokenImportance(word, total, counts[label][word], total / counts[label][word])
            for word, total in totals[label].items()
            if counts[label][word] >= min_count
        ]
        ranked[label] = sorted(rows, key=lambda r: -r.total)[:top]
    return ranked
