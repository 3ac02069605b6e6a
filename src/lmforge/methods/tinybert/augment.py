"""TinyBERT's data augmentation (Jiao et al. 2020, section 3.2, Algorithm 1).

For each example, N augmented copies; in each copy every word is, with probability p (0.4),
replaced by one of its K (15) candidates, drawn uniformly.

Candidates. The paper asks a masked language model for single-piece words and takes GloVe
neighbours for the others. No masked LM is available offline here (the builtin MiniLM is a
sentence encoder without its MLM head) and no GloVe, so every word's candidates are its K nearest
neighbours, by cosine similarity, in the **teacher's input-embedding matrix**, among vocabulary
entries that are whole alphabetic words. Words that are not single vocabulary entries (split into
several pieces, numbers, punctuation) are never replaced.

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
from pathlib import Path

import torch

from lmforge.core.console import say


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


def augment_text(text: str, candidates: dict[str, list[str]], prob: float, rng: random.Random) -> str:
    """One augmented copy of `text` (words split on whitespace, matched lower-cased)."""
    words = text.split()
    for i, word in enumerate(words):
        options = candidates.get(word.lower())
        if options and rng.random() < prob:
            words[i] = rng.choice(options)
    return " ".join(words)


def augment(
    texts: list[str], labels: list[str], candidates: dict[str, list[str]], copies: int, prob: float, seed: int
) -> tuple[list[str], list[str]]:
    """The originals followed by `copies` augmented copies of each; deterministic in `seed`."""
    out_texts, out_labels = list(texts), list(labels)
    for i, (text, label) in enumerate(zip(texts, labels)):
        for c in range(copies):
            rng = random.Random(f"{seed}:{i}:{c}")  # string seeds hash the same in every process
            out_texts.append(augment_text(text, candidates, prob, rng))
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
        json.dumps([texts, labels, teacher, copies, prob, k, seed, "v1"], ensure_ascii=False).encode()
    ).hexdigest()[:20]
    path = cache_dir() / f"{key}.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        say(f"augmentation: {len(rows):,} examples from the cache {path}")
        return [r["text"] for r in rows], [r["label"] for r in rows]
    words = {w.lower() for text in texts for w in text.split()}
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
        f"augmentation: {len(texts):,} examples x {copies} copies -> {len(out_texts):,}; "
        f"{replaced:,} of {len(words):,} distinct words have candidates; cached in {path}"
    )
    return out_texts, out_labels
