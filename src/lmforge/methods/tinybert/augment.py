"""TinyBERT's data augmentation (Jiao et al. 2020, section 3.2, Algorithm 1).

For each example, N attempts at an augmented copy; in each attempt every word is, with
probability p (0.4), replaced by one of its K (15) candidates, drawn uniformly. As in the official
code (huawei-noah/Pretrained-Language-Model, TinyBERT/data_augmentation.py): words are BERT's
basic-tokenizer words (runs of letters and digits, punctuation apart), only purely alphabetic words
that are not stopwords are replaced (its `StopWordsList`, NLTK's English list), and an attempt
identical to the original or to an earlier copy is dropped, so an example gets at most N copies.

Candidates. The paper asks a masked language model for single-piece words and takes GloVe
neighbours for the others. No masked LM is available offline here (the builtin MiniLM is a
sentence encoder without its MLM head) and no GloVe, so every word's candidates are its K nearest
neighbours, by cosine similarity, in the **teacher's input-embedding matrix**, among vocabulary
entries that are whole alphabetic words. Words that are not single vocabulary entries (split into
several pieces; the official code takes GloVe neighbours for those) are never replaced.

Speed. The original implementation runs the MLM once per word and is known to be slow; here the
neighbours of all the dataset's words come from a few batched matrix products, the copies from a
seeded RNG per (example, copy), and the result is cached on disk under a key of everything that
determines it, so a rerun, a resume or another seed of the student reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

import torch

from lmforge.core.console import say

# The official code's `StopWordsList` (NLTK's English stopwords plus "'s" and "'re"): never replaced.
STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
    he him his himself she she's her hers herself it it's its itself they them their theirs themselves
    this that that'll these those am is are was were be been being have has had having do does did doing
    a an the and but if or because as until while of at by for with about against between into through
    during before after above below to from up down in out on off over under again further then once here
    there all any both each few more most other some such no nor not only own same so than too very s t
    can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn
    didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't
    needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't 's 're""".split()
)
# BERT's basic tokenizer splits on whitespace and punctuation: a word is a run of letters and digits.
WORD = re.compile(r"[^\W_]+")


def is_word(token: str) -> bool:
    return token.isalpha() and token.isascii() and len(token) > 1


def neighbour_candidates(
    embeddings: torch.Tensor, vocab: dict[str, int], words: set[str], k: int, chunk: int = 2048
) -> dict[str, list[str]]:
    """K nearest whole-word vocabulary entries (cosine, itself excluded) of each of `words`.

    embeddings: (V, D), the teacher's input-embedding matrix; vocab: token -> row."""
    pool = sorted(t for t in vocab if is_word(t))
    pool_rows = torch.tensor([vocab[t] for t in pool])
    pool_vectors = torch.nn.functional.normalize(embeddings[pool_rows].float(), dim=-1)  # (P, D)
    position = {t: i for i, t in enumerate(pool)}
    queries = sorted(w for w in words if w in position)
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), chunk):
        batch = queries[start : start + chunk]
        rows = torch.tensor([position[w] for w in batch])
        similarity = pool_vectors[rows] @ pool_vectors.T  # (b, P)
        similarity[torch.arange(len(batch)), rows] = -2.0  # never a word's own candidate
        best = similarity.topk(min(k, len(pool) - 1), dim=-1).indices  # (b, K)
        for word, ids in zip(batch, best.tolist()):
            out[word] = [pool[j] for j in ids]
    return out


def replaceable(word: str) -> bool:
    """The official code's test: purely alphabetic (a-z, any case) and not a stopword."""
    return word.isascii() and word.isalpha() and word.lower() not in STOPWORDS


def words_of(text: str) -> list[str]:
    return [m.group() for m in WORD.finditer(text)]


def augment_text(text: str, candidates: dict[str, list[str]], prob: float, rng: random.Random) -> str:
    """One augmented copy of `text`: each replaceable word with candidates (matched lower-cased) is
    replaced with probability `prob`; spacing and punctuation are kept as they are."""

    def replace(match: re.Match) -> str:
        word = match.group()
        options = candidates.get(word.lower()) if replaceable(word) else None
        if options and rng.random() < prob:
            return rng.choice(options)
        return word

    return WORD.sub(replace, text)


def augment(
    texts: list[str], labels: list[str], candidates: dict[str, list[str]], copies: int, prob: float, seed: int
) -> tuple[list[str], list[str]]:
    """The originals followed by up to `copies` augmented copies of each (an attempt equal to the
    original or to an earlier copy of it is dropped, as in the official code); deterministic in `seed`."""
    out_texts, out_labels = list(texts), list(labels)
    for i, (text, label) in enumerate(zip(texts, labels)):
        seen = {text}
        for c in range(copies):
            rng = random.Random(f"{seed}:{i}:{c}")  # string seeds hash the same in every process
            copy = augment_text(text, candidates, prob, rng)
            if copy not in seen:
                seen.add(copy)
                out_texts.append(copy)
                out_labels.append(label)
    return out_texts, out_labels


def cache_dir() -> Path:
    root = os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge"
    return Path(root) / "tinybert-augment"


def cached_augment(
    texts: list[str],
    labels: list[str],
    teacher: str,
    embeddings: torch.Tensor,
    vocab: dict[str, int],
    copies: int,
    prob: float,
    k: int,
    seed: int,
) -> tuple[list[str], list[str]]:
    """`augment` with its candidates, read from or written to the cache (atomically)."""
    key = hashlib.sha256(
        json.dumps([texts, labels, teacher, copies, prob, k, seed, "v2"], ensure_ascii=False).encode()
    ).hexdigest()[:20]
    path = cache_dir() / f"{key}.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        say(f"augmentation: {len(rows):,} examples from the cache {path}")
        return [r["text"] for r in rows], [r["label"] for r in rows]
    words = {w.lower() for text in texts for w in words_of(text) if replaceable(w)}
    candidates = neighbour_candidates(embeddings, vocab, words, k)
    out_texts, out_labels = augment(texts, labels, candidates, copies, prob, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for text, label in zip(out_texts, out_labels):
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    replaced = sum(1 for w in words if w in candidates)
    say(
        f"augmentation: {len(texts):,} examples x {copies} copies -> {len(out_texts):,} "
        f"({len(texts) * (copies + 1) - len(out_texts):,} duplicate copies dropped); "
        f"{replaced:,} of {len(words):,} distinct words have candidates; cached in {path}"
    )
    return out_texts, out_labels
