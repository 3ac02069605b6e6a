"""LIME against its authors' package (`lime` 0.2.0.1, in the test extra): same samples, same
explained outputs, same coefficients."""

import numpy as np
import pytest
import scipy.sparse
import sklearn.metrics
from lime.lime_text import IndexedString, LimeTextExplainer
from shortcut_task import LABELS, shortcut_model  # noqa: F401 (a fixture)

from lmforge.explain.attribution import Explainer, text_seed
from lmforge.explain.lime import lime_distances, lime_fit, lime_kernel, lime_masks


def package_distances(masks: np.ndarray) -> np.ndarray:
    """LimeTextExplainer's distance_fn: 100 x cosine distance of every row to the first (lime_text.py)."""
    rows = scipy.sparse.csr_matrix(masks)
    return sklearn.metrics.pairwise.pairwise_distances(rows, rows[0], metric="cosine").ravel() * 100


@pytest.mark.parametrize("n_words", [2, 7, 30])
def test_samples_are_the_packages_samples(n_words):
    """The same RandomState gives the package's neighbourhood, row for row; its first row is the text."""
    text = " ".join(f"w{i}" for i in range(n_words))
    package = LimeTextExplainer(random_state=5, bow=False)
    data, _, _ = package._LimeTextExplainer__data_labels_distances(
        IndexedString(text, bow=False), lambda texts: np.zeros((len(texts), 2)), 300
    )
    ours = lime_masks(n_words, 300, np.random.RandomState(5))
    assert np.array_equal(ours, data)
    assert (ours[0] == 1).all()
    removed = n_words - ours[1:].sum(axis=1)
    assert removed.min() == 1 and removed.max() == n_words  # 1..W words removed, all W included


def test_distances_and_kernel_are_the_packages():
    masks = lime_masks(9, 200, np.random.RandomState(0))
    masks[5] = 0  # a sample with no word left
    assert np.allclose(lime_distances(masks), package_distances(masks), atol=1e-9)
    kernel = LimeTextExplainer().base.kernel_fn  # sqrt(exp(-d^2 / 25^2))
    distances = package_distances(masks)
    assert np.allclose(lime_kernel(distances), kernel(distances), rtol=1e-12)


@pytest.mark.parametrize(("n_words", "n_samples"), [(1, 50), (3, 40), (12, 200), (40, 100)])
def test_coefficients_are_the_packages_on_the_same_samples(n_words, n_samples):
    """Identical masks and outputs into LimeBase (Ridge(alpha=1) with kernel weights, every feature kept)
    and into lime_fit: identical coefficients and intercept, including more words than samples."""
    rng = np.random.RandomState(n_words)
    masks = lime_masks(n_words, n_samples, rng)
    effect = rng.normal(size=n_words)
    outputs = 1 / (1 + np.exp(-(masks @ effect - 0.5 * masks[:, 0] * masks[:, -1])))  # (N,) not linear in masks
    outputs_two_labels = np.stack([1 - outputs, outputs], axis=1)
    intercept, pairs, _, _ = LimeTextExplainer().base.explain_instance_with_data(
        masks, outputs_two_labels, package_distances(masks), 1, n_words, feature_selection="none"
    )
    expected = np.zeros(n_words)
    for feature, weight in pairs:
        expected[feature] = weight
    coef, ours_intercept = lime_fit(masks, outputs)
    assert np.allclose(coef, expected, rtol=1e-7, atol=1e-10)
    assert ours_intercept == pytest.approx(intercept, rel=1e-7, abs=1e-10)
    assert np.abs(expected).max() > 1e-3  # the check compares real coefficients, not zeros


def test_explainer_lime_is_the_packages_lime_on_a_model(shortcut_model):  # noqa: F811 (the fixture)
    """End to end: the package's LimeTextExplainer on the same classifier, with the text's seed, words
    replaced by [MASK] (bow=False) and every word kept (feature_selection 'none'), gives the explainer's
    word scores. The words are single word pieces, so both replace the same tokens."""
    model, tokenizer, _, _ = shortcut_model
    explainer = Explainer(model, tokenizer, LABELS, batch_size=8)
    text = "a dull city film with no story at all"
    (ours,) = explainer.explain([text], "lime", n_samples=120, seed=3)
    assert len(ours.pieces) == len(ours.words) + 2  # one piece per word

    def classifier_fn(texts: list[str]) -> np.ndarray:
        return explainer.probabilities([tokenizer(t)["input_ids"] for t in texts])

    package = LimeTextExplainer(
        random_state=text_seed(3, ours.input_ids), bow=False, mask_string="[MASK]", feature_selection="none"
    )
    got = package.explain_instance(
        text, classifier_fn, labels=(ours.target,), num_features=len(ours.words), num_samples=120
    )
    expected = np.zeros(len(ours.words))
    for feature, weight in got.local_exp[ours.target]:
        expected[feature] = weight
    assert np.allclose(ours.word_scores, expected, atol=1e-6)
    assert ours.words[int(np.argmax(ours.word_scores))] == "city"
