"""The views FixMatch trains on (methods/crest/augment.py)."""

from collections import Counter

from lmforge.methods.crest.augment import strong_view, weak_view

TEXT = "the film is a charming and often affecting journey through a fading world of memories"


def test_the_weak_view_is_the_text():
    assert weak_view(TEXT) == TEXT


def test_the_strong_view_is_reproducible_and_depends_on_the_seed():
    assert strong_view(TEXT, seed=1) == strong_view(TEXT, seed=1)
    views = {strong_view(TEXT, seed=s) for s in range(20)}
    assert len(views) > 10  # different seeds, different views


def test_the_strong_view_only_drops_and_reorders_words():
    words = Counter(TEXT.split())
    dropped, unchanged = [], 0
    for s in range(200):
        view = Counter(strong_view(TEXT, seed=s).split())
        assert not view - words  # no word added
        unchanged += strong_view(TEXT, seed=s) == TEXT  # only when nothing dropped and equal words swapped
        dropped.append(sum((words - view).values()))
    assert unchanged <= 10
    # each of the 15 words is dropped with probability 0.1: about 1.5 per view on average
    assert 1.0 < sum(dropped) / len(dropped) < 2.0


def test_a_one_word_text_is_kept():
    assert strong_view("great", seed=0) == "great"
