"""A tiny classifier with a known shortcut: label 1 exactly when the word "city" is in the text.

Import `shortcut_model` (the fixture) into a test module to use it.

Trained in-process in a few seconds, so explanation tests can assert what a faithful method must find.
"""

import functools
import random

import pytest
import torch

from lmforge.data.classify import collate, encode
from lmforge.data.files import load_examples
from lmforge.models.classifier import load_classifier

MARKER = "city"
LABELS = ["without", "with"]


def shortcut_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """SST-2 sentences cut to 12 words without the marker; half get it inserted at a random place."""
    rng = random.Random(seed)
    pool = [t for t in load_examples("sst2:train").texts if MARKER not in t.split()]
    texts, labels = [], []
    for i in range(n):
        words = rng.choice(pool).split()[:12]
        if i % 2:
            words.insert(rng.randrange(len(words) + 1), MARKER)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


@pytest.fixture(scope="session")
def shortcut_model():
    return train_shortcut_model()


def train_tiny_classifier(n_texts: int, epochs: int, lr: float):
    """tiny-bert trained on the shortcut task; (model, tokenizer) in eval mode."""
    torch.manual_seed(0)
    model, tokenizer = load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)
    texts, labels = shortcut_texts(n_texts, seed=0)
    ids = encode(tokenizer, texts, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(ids), 32):
            batch = collate(ids[start : start + 32], tokenizer.pad_token_id)
            loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor(labels[start : start + 32]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval(), tokenizer


@functools.cache  # one training per test process, whichever module asks first
def train_smooth_model():
    """tiny-bert trained briefly on the shortcut task: p changes smoothly with the input, so gradients are
    not saturated (the shortcut model's are about 1e-8)."""
    return train_tiny_classifier(512, epochs=1, lr=3e-3)


@functools.cache  # one training per test process, whichever module asks first
def train_shortcut_model():
    model, tokenizer = train_tiny_classifier(512, epochs=3, lr=3e-3)
    test_texts, test_labels = shortcut_texts(64, seed=1)
    with torch.no_grad():
        predicted = model(**collate(encode(tokenizer, test_texts, 64), tokenizer.pad_token_id)).logits.argmax(-1)
    accuracy = (predicted == torch.tensor(test_labels)).float().mean().item()
    assert accuracy > 0.95, f"the shortcut model did not learn its shortcut (accuracy {accuracy:.2f})"
    return model, tokenizer, test_texts, test_labels
