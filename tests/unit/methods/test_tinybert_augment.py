import random

import torch

from lmforge.methods.tinybert import augment as aug

VOCAB = {"[PAD]": 0, "good": 1, "great": 2, "bad": 3, "film": 4, "movie": 5, "##s": 6, "7": 7, "a": 8}


def embeddings():
    e = torch.zeros(len(VOCAB), 3)
    e[1], e[2], e[3] = torch.tensor([1.0, 0.1, 0]), torch.tensor([1.0, 0.2, 0]), torch.tensor([0.6, -1, 0])
    e[4], e[5] = torch.tensor([0, 0, 1.0]), torch.tensor([0, 0.1, 1.0])
    e[6], e[7], e[8] = torch.tensor([1.0, 0.1, 0.01]), torch.tensor([1.0, 0.1, 0.02]), torch.tensor([1.0, 0.1, 0.03])
    return e


def test_candidates_are_nearest_whole_words_never_the_word_itself():
    found = aug.neighbour_candidates(embeddings(), VOCAB, {"good", "film", "unknown", "7"}, k=2)
    assert found["good"] == ["great", "bad"]  # "##s", "7" and "a" are close but not whole alphabetic words
    assert found["film"][0] == "movie"
    assert "unknown" not in found and "7" not in found


def test_augment_replaces_words_with_probability_p_and_is_deterministic():
    candidates = {"good": ["great"], "film": ["movie"]}
    rng = random.Random(7)
    texts = ["a good film"] * 4000
    copies = [aug.augment_text(text, candidates, 0.4, rng) for text in texts]
    replaced = sum(t.split()[1] == "great" for t in copies) / len(copies)
    assert 0.37 < replaced < 0.43
    out, labels = aug.augment(texts[:400], ["1"] * 400, candidates, copies=1, prob=0.4, seed=7)
    assert out[:400] == texts[:400] and labels == ["1"] * len(out)  # originals first, labels copied
    assert aug.augment(texts[:400], ["1"] * 400, candidates, 1, 0.4, seed=7)[0] == out
    assert aug.augment(texts[:400], ["1"] * 400, candidates, 1, 0.4, seed=8)[0] != out
    assert aug.augment_text("a good film", candidates, 0.0, random.Random(0)) == "a good film"
    assert aug.augment_text("a Good film", candidates, 1.0, random.Random(0)) == "a great movie"


def test_stopwords_digits_and_punctuation_are_never_replaced_and_spacing_is_kept():
    # the official code skips its StopWordsList and words that are not purely a-z
    candidates = {w: ["X"] for w in ("the", "not", "very", "good", "film", "film2", "t", "don")}
    text = "the film, not very good (don't) film2!"
    assert aug.augment_text(text, candidates, 1.0, random.Random(0)) == "the X, not very X (don't) film2!"
    assert aug.words_of("it's well-made.") == ["it", "s", "well", "made"]  # BERT's basic tokenizer's words
    assert {"the", "not", "very", "don", "t", "s"} <= aug.STOPWORDS and "good" not in aug.STOPWORDS


def test_duplicate_copies_are_dropped():
    # as the official code: a copy equal to the original or to an earlier copy is not kept
    candidates = {"good": ["great"]}
    out, labels = aug.augment(["good", "bad"], ["1", "0"], candidates, copies=20, prob=0.5, seed=0)
    assert out == ["good", "bad", "great"] and labels == ["1", "0", "1"]


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    args = (["a good film", "bad movie"], ["1", "0"], "teacher", embeddings(), VOCAB, 3, 0.5, 2, 0)
    first = aug.cached_augment(*args)
    files = list((tmp_path / "tinybert-augment").glob("*.jsonl"))
    assert len(files) == 1 and 2 < len(first[0]) <= 8 and len(set(first[0])) == len(first[0])
    assert aug.cached_augment(*args) == first
    other = aug.cached_augment(*args[:5], 3, 0.5, 2, 1)  # another seed: another cache entry
    assert other != first and len(list((tmp_path / "tinybert-augment").glob("*.jsonl"))) == 2
