"""A text as the model's word pieces and as words, and scores moved between the two.

Attributions are computed per word piece (what the model sees) and shown per word (what a reader
sees); perturbation methods (occlusion, LIME, kernel SHAP) remove whole words. These are the maps
between the two, from a fast tokenizer's offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.errors import UserError


@dataclass
class Encoded:
    """One text as the model sees it, with the map from word pieces back to words."""

    text: str
    input_ids: list[int]  # (T,) with [CLS] ... [SEP]
    pieces: list[str]  # (T,)
    piece_word: list[int]  # (T,) word index of each piece; -1 for special tokens
    words: list[str]  # (W,) the text's words as the tokenizer split them

    @property
    def content(self) -> np.ndarray:
        """Positions of the pieces that are not special tokens."""
        return np.flatnonzero(np.asarray(self.piece_word) >= 0)


def encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """Word pieces of `text` and the word each belongs to, from a fast tokenizer's offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("explanations need a fast (Rust) tokenizer to map word pieces back to words")
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    word_of_piece = enc.word_ids()
    order = {w: i for i, w in enumerate(dict.fromkeys(w for w in word_of_piece if w is not None))}
    spans: dict[int, list[int]] = {}
    for w, (start, end) in zip(word_of_piece, enc["offset_mapping"]):
        if w is not None:
            span = spans.setdefault(order[w], [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    return Encoded(
        text=text,
        input_ids=list(enc["input_ids"]),
        pieces=tokenizer.convert_ids_to_tokens(enc["input_ids"]),
        piece_word=[-1 if w is None else order[w] for w in word_of_piece],
        words=[text[s:e] for s, e in (spans[i] for i in range(len(spans)))],
    )


def word_sums(piece_scores: np.ndarray, piece_word: Sequence[int], n_words: int) -> np.ndarray:
    """(W,) sum of the piece scores of each word; special tokens (-1) are left out."""
    words = np.zeros(n_words)
    index = np.asarray(piece_word)
    keep = index >= 0
    np.add.at(words, index[keep], piece_scores[keep])
    return words


def mask_words(input_ids: Sequence[int], piece_word: Sequence[int], masks: np.ndarray, mask_id: int) -> list[list[int]]:
    """One row of ids per word-presence vector in `masks` (N, W): every piece of a word whose entry is 0
    becomes `mask_id`; special tokens (word -1) stay."""
    word = np.asarray(piece_word)
    rows = np.tile(np.asarray(input_ids), (len(masks), 1))  # (N, T)
    content = word >= 0
    removed = np.zeros_like(rows, dtype=bool)
    removed[:, content] = masks[:, word[content]] == 0
    rows[removed] = mask_id
    return rows.tolist()


def share_word_scores(word_scores: np.ndarray, piece_word: Sequence[int]) -> np.ndarray:
    """(T,) piece scores from (W,) word scores: each piece an equal share of its word's; 0 at special tokens."""
    word = np.asarray(piece_word)
    content = word >= 0
    scores = np.zeros(len(word))
    scores[content] = word_scores[word[content]] / np.bincount(word[content])[word[content]]
    return scores
