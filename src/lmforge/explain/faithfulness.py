"""How faithful an explanation is to the model: ERASER's comprehensiveness and sufficiency, and rank
agreement with leave-one-out occlusion.

DeYoung et al. 2020 ("ERASER: A Benchmark to Evaluate Rationalized NLP Models", section 4.2), for the
explained label j, a text x and its rationale r (the top-scored tokens):
  comprehensiveness = p(j | x) - p(j | x without r)      high: the model needed those tokens
  sufficiency       = p(j | x) - p(j | r alone)          low: those tokens alone keep the prediction
each averaged over the rationale sizes B = {1, 5, 10, 20, 50}% of the text's tokens (AOPC; here the
plain mean over the five bins). Tokens are word pieces, [CLS] / [SEP] are always kept, and they are
removed at the token-id level: `delete` drops the ids from the sequence (ERASER's setting), `mask`
replaces them by [MASK] (the length stays the same). Text is never decoded and re-tokenised, which
would change the pieces.

Kendall's tau-b between a method's piece scores and leave-one-out occlusion's, per text, averaged
(Jain & Wallace 2019 compare attention with leave-one-out the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.explain.attribution import Attribution, Explainer

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
MODES = ("delete", "mask")


@dataclass
class Faithfulness:
    method: str
    mode: str
    texts: int
    comprehensiveness: float  # AOPC, mean over texts
    sufficiency: float
    comprehensiveness_per_bin: list[float]  # one per BINS entry
    sufficiency_per_bin: list[float]
    kendall_tau: float | None  # vs leave-one-out occlusion, mean over texts where it is defined

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def rationale_size(n_content: int, fraction: float) -> int:
    """Number of tokens in the top `fraction` of a text: at least one, at most all."""
    return min(n_content, max(1, round(fraction * n_content)))


def ranked_content(attribution: Attribution) -> np.ndarray:
    """Positions of the content pieces, highest score first; ties broken by position (stable sort)."""
    content = np.flatnonzero(np.asarray(attribution.piece_word) >= 0)
    return content[np.argsort(-attribution.piece_scores[content], kind="stable")]


def without(ids: Sequence[int], positions: Sequence[int], mode: str, mask_id: int) -> list[int]:
    """`ids` with `positions` removed (delete) or replaced by [MASK] (mask)."""
    drop = set(int(p) for p in positions)
    if mode == "delete":
        return [t for i, t in enumerate(ids) if i not in drop]
    return [mask_id if i in drop else t for i, t in enumerate(ids)]


def only(ids: Sequence[int], keep: Sequence[int], piece_word: Sequence[int], mode: str, mask_id: int) -> list[int]:
    """`ids` keeping the special tokens and `keep`; every other content piece removed or masked."""
    kept = set(int(p) for p in keep)
    others = [i for i, w in enumerate(piece_word) if w >= 0 and i not in kept]
    return without(ids, others, mode, mask_id)


def erasure_rows(attribution: Attribution, mode: str, mask_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """For each bin, the text without its rationale and the rationale alone."""
    ranked = ranked_content(attribution)
    removed, kept = [], []
    for fraction in BINS:
        rationale = ranked[: rationale_size(len(ranked), fraction)]
        removed.append(without(attribution.input_ids, rationale, mode, mask_id))
        kept.append(only(attribution.input_ids, rationale, attribution.piece_word, mode, mask_id))
    return removed, kept


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float | None:
    """Kendall's tau-b of two score vectors; None when either is constant (undefined)."""
    from scipy.stats import kendalltau

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(kendalltau(a, b).statistic)


def faithfulness(
    explainer: Explainer,
    attributions: list[Attribution],
    mode: str = "delete",
    reference: list[Attribution] | None = None,
) -> Faithfulness:
    """ERASER's AOPC comprehensiveness and sufficiency of `attributions` (one method, many texts),
    and Kendall's tau with `reference` (leave-one-out occlusion of the same texts) when given."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    rows = []
    for a in attributions:
        removed, kept = erasure_rows(a, mode, explainer.mask_id)
        rows += removed + kept
    probs = explainer.probabilities(rows)  # (N * 2 * bins, C), in batches
    n_bins = len(BINS)
    comp = np.zeros((len(attributions), n_bins))
    suff = np.zeros((len(attributions), n_bins))
    for i, a in enumerate(attributions):
        block = probs[i * 2 * n_bins : (i + 1) * 2 * n_bins, a.target]
        full = a.probabilities[a.target]
        comp[i] = full - block[:n_bins]
        suff[i] = full - block[n_bins:]
    taus = []
    if reference is not None:
        for a, r in zip(attributions, reference):
            content = np.flatnonzero(np.asarray(a.piece_word) >= 0)
            tau = kendall_tau_b(a.piece_scores[content], r.piece_scores[content])
            if tau is not None:
                taus.append(tau)
    return Faithfulness(
        method=attributions[0].method if attributions else "",
        mode=mode,
        texts=len(attributions),
        comprehensiveness=float(comp.mean()) if attributions else float("nan"),
        sufficiency=float(suff.mean()) if attributions else float("nan"),
        comprehensiveness_per_bin=[float(v) for v in comp.mean(0)] if attributions else [],
        sufficiency_per_bin=[float(v) for v in suff.mean(0)] if attributions else [],
        kendall_tau=float(np.mean(taus)) if taus else None,
    )
