"""Weak and strong views of a text for FixMatch, in the spirit of EDA (Wei and Zou, EMNLP 2019, "EDA: Easy
Data Augmentation Techniques for Boosting Performance on Text Classification Tasks", section 2.1).

FixMatch (Sohn et al. 2020) needs a weak and a strong augmentation of each unlabeled example. Images
use flips and crops (weak) and RandAugment (strong); text-SSL work uses back-translation or word-level
edits. With no translation model offline, the views here are word-level edits:
- weak: the text unchanged (FixMatch's weak view for text in USB is the original sentence as well);
- strong: random deletion (each word dropped with probability p, at least one kept) and random swap
  (n = max(1, round(p x words)) swaps of two positions), EDA's RD and RS at EDA's p = 0.1.
Synonym replacement (EDA's SR) is not here yet: the bundled WordNet graph (WN18RR) names one lemma
per synset, so it has no synonym lists.

Every view is a function of (text, seed): the same call gives the same view, so a resumed run sees the
same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import random


def view_rng(text: str, seed: int) -> random.Random:
    """A random generator for one text's view: stable across processes (not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def weak_view(text: str) -> str:
    return text


def strong_view(text: str, seed: int, p: float = 0.1) -> str:
    """Random deletion, then random swaps (EDA's RD and RS with alpha = p)."""
    rng = view_rng(text, seed)
    words = text.split()
    if len(words) <= 1:
        return text
    kept = [w for w in words if rng.random() >= p] or [rng.choice(words)]
    for _ in range(max(1, round(p * len(kept)))):
        if len(kept) < 2:
            break
        i, j = rng.sample(range(len(kept)), 2)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)
