import numpy as np
import pytest
from shortcut_task import LABELS, MARKER, shortcut_model  # noqa: F401 (a fixture)

from lmforge.explain.attribution import Attribution, Explainer
from lmforge.explain.faithfulness import (
    BINS,
    erasure_rows,
    faithfulness,
    kendall_tau_b,
    only,
    ranked_content,
    rationale_size,
    without,
)

CLS, SEP, MASK = 101, 102, 103


def attribution(ids, piece_word, scores, target=0) -> Attribution:
    return Attribution(
        method="test",
        text="",
        target=target,
        target_label=LABELS[target],
        labels=LABELS,
        probabilities=[0.9, 0.1],
        input_ids=ids,
        pieces=[str(i) for i in ids],
        piece_word=piece_word,
        piece_scores=np.asarray(scores, dtype=float),
    )


def test_tokens_are_removed_or_masked_at_the_id_level():
    ids = [CLS, 7, 8, 9, SEP]
    assert without(ids, [1, 3], "delete", MASK) == [CLS, 8, SEP]
    assert without(ids, [1, 3], "mask", MASK) == [CLS, MASK, 8, MASK, SEP]
    assert only(ids, [2], [-1, 0, 1, 2, -1], "delete", MASK) == [CLS, 8, SEP]
    assert only(ids, [2], [-1, 0, 1, 2, -1], "mask", MASK) == [CLS, MASK, 8, MASK, SEP]


def test_rationale_sizes_round_and_stay_within_the_text():
    assert [rationale_size(20, f) for f in BINS] == [1, 1, 2, 4, 10]
    assert rationale_size(3, 0.5) == 2 and rationale_size(1, 0.01) == 1 and rationale_size(4, 1.0) == 4


def test_ranking_skips_special_tokens_and_breaks_ties_by_position():
    a = attribution([CLS, 7, 8, 9, SEP], [-1, 0, 1, 2, -1], [99.0, 0.5, 0.9, 0.5, 99.0])
    assert list(ranked_content(a)) == [2, 1, 3]


def test_erasure_rows_per_bin():
    ids = [CLS, *range(10, 20), SEP]  # 10 content pieces: bins keep 1, 1, 1, 2, 5 pieces
    scores = [0.0, *range(10), 0.0]  # piece 19 (position 10) scores highest
    a = attribution(ids, [-1, *range(10), -1], scores)
    removed, kept = erasure_rows(a, "delete", MASK)
    assert removed[0] == [CLS, *range(10, 19), SEP] and kept[0] == [CLS, 19, SEP]
    assert kept[-1] == [CLS, 15, 16, 17, 18, 19, SEP]
    assert removed[-1] == [CLS, 10, 11, 12, 13, 14, SEP]


def test_kendall_tau():
    assert kendall_tau_b(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert kendall_tau_b(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert kendall_tau_b(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None


@pytest.fixture(scope="module")
def explained(shortcut_model):
    model, tokenizer, texts, _ = shortcut_model
    explainer = Explainer(model, tokenizer, LABELS, batch_size=8)
    methods = ("occlusion", "ig", "random")
    return explainer, {m: explainer.explain(texts[:24], m) for m in methods}


@pytest.mark.parametrize("mode", ["delete", "mask"])
def test_random_is_least_comprehensive_and_occlusion_beats_it(explained, mode):
    explainer, attributions = explained
    scores = {m: faithfulness(explainer, a, mode, attributions["occlusion"]) for m, a in attributions.items()}
    assert scores["occlusion"].comprehensiveness > scores["random"].comprehensiveness + 0.2
    assert scores["ig"].comprehensiveness > scores["random"].comprehensiveness + 0.2
    assert scores["occlusion"].sufficiency < scores["random"].sufficiency
    assert scores["occlusion"].kendall_tau == pytest.approx(1.0)
    assert abs(scores["random"].kendall_tau) < 0.3
    assert scores["random"].texts == 24 and len(scores["random"].comprehensiveness_per_bin) == len(BINS)


def test_removing_the_shortcut_flips_the_prediction(explained):
    """Comprehensiveness by hand for one text whose top token is the marker."""
    explainer, attributions = explained
    a = next(x for x in attributions["occlusion"] if x.target_label == "with")
    assert a.pieces[ranked_content(a)[0]] == MARKER
    drop = faithfulness(explainer, [a], "delete").comprehensiveness_per_bin[0]
    rest = [t for i, t in enumerate(a.input_ids) if a.pieces[i] != MARKER]
    assert drop == pytest.approx(a.probabilities[a.target] - explainer.probabilities([rest])[0, a.target], abs=1e-6)
    assert drop > 0.5
