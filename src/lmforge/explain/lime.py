"""LIME for text, as its authors define it.

Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?: Explaining the Predictions of Any
Classifier" (KDD), section 3: an explanation minimises L(f, g, pi_x) + Omega(g) (eq. 1) with the
locality-weighted square loss L = sum_z pi_x(z) (f(z) - g(z'))^2 (eq. 2), g linear in the binary
word-presence vector z', and samples drawn around x by removing words (section 3.3). The details the
paper leaves open are taken from the authors' package (`lime` 0.2.0.1: `lime_text.LimeTextExplainer`,
`lime_base.LimeBase`):

  samples    the first sample is the text itself (all W words present); each other one removes k
             words, k uniform on 1..W (numpy `randint(1, W + 1)`: all W words can go), the k chosen
             uniformly without replacement, in the same random-number calls as the package
  distance   D = 100 x the cosine distance between z' and the all-ones vector
  kernel     pi(z) = sqrt(exp(-D^2 / width^2)), width 25
  surrogate  ridge regression with an unpenalised intercept, alpha 1, pi as sample weights
             (scikit-learn's Ridge(alpha=1, fit_intercept=True).fit(z', f, sample_weight=pi)):
             min_{b0, b} sum_i pi_i (f_i - b0 - z'_i . b)^2 + alpha |b|^2, weights not normalised
  features   every word gets a coefficient: no feature selection (LimeBase's 'none'); the package's
             default ('auto' with 10 features) would refit on the 10 largest and score the rest 0

tests/unit/explain/test_lime.py pins all of this against the `lime` package on the same samples.
"""

from __future__ import annotations

import numpy as np

KERNEL_WIDTH = 25.0  # LimeTextExplainer(kernel_width=25)
RIDGE_ALPHA = 1.0  # LimeBase: Ridge(alpha=1, fit_intercept=True)


def lime_masks(n_words: int, n_samples: int, random_state: np.random.RandomState) -> np.ndarray:
    """(N, W) word-presence vectors, 1 = kept: row 0 the text itself, then n_samples - 1 rows that
    each remove a uniform number of words in 1..W. Draws as LimeTextExplainer does, call for call, so
    the same RandomState gives the package's samples."""
    sizes = random_state.randint(1, n_words + 1, n_samples - 1)
    masks = np.ones((n_samples, n_words))
    for row, size in enumerate(sizes, start=1):
        masks[row, random_state.choice(range(n_words), size, replace=False)] = 0
    return masks


def lime_distances(masks: np.ndarray) -> np.ndarray:
    """(N,) 100 x cosine distance of each row to the all-ones row; a row with no word left is at 100."""
    kept = masks.sum(axis=1)
    norms = np.sqrt(kept) * np.sqrt(masks.shape[1])  # |z'| |1|
    cosine = np.divide(kept, norms, out=np.zeros_like(kept), where=norms > 0)
    return 100.0 * np.clip(1.0 - cosine, 0.0, 2.0)


def lime_kernel(distances: np.ndarray, width: float = KERNEL_WIDTH) -> np.ndarray:
    """(N,) LimeTextExplainer's sample weights sqrt(exp(-D^2 / width^2))."""
    return np.sqrt(np.exp(-(distances**2) / width**2))


def weighted_ridge(x: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """min_{b0, b} sum_i w_i (y_i - b0 - x_i . b)^2 + alpha |b|^2 in closed form (float64): the intercept
    is unpenalised, so centre x and y on their weighted means and solve the ridge on the centred rows
    scaled by sqrt(w). As scikit-learn's Ridge with sample_weight: the weights are not normalised, so
    alpha's strength is relative to their sum. Returns (b, b0); minimum norm if singular (alpha 0)."""
    x, y, w = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(weights, np.float64)
    share = w / w.sum()  # for the means only
    x_mean, y_mean = share @ x, share @ y  # (F,), ()
    root_w = np.sqrt(w)[:, None]
    # [sqrt(W) Xc; sqrt(alpha) I] b = [sqrt(W) yc; 0]
    a = np.vstack([root_w * (x - x_mean), np.sqrt(alpha) * np.eye(x.shape[1])])
    b = np.concatenate([root_w[:, 0] * (y - y_mean), np.zeros(x.shape[1])])
    coef = np.linalg.lstsq(a, b, rcond=None)[0]  # (F,)
    return coef, float(y_mean - x_mean @ coef)


def lime_fit(masks: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, float]:
    """LIME's surrogate for samples `masks` (N, W) and the explained output on each (N,):
    (W,) word coefficients and the intercept."""
    return weighted_ridge(masks, outputs, lime_kernel(lime_distances(masks)), RIDGE_ALPHA)
