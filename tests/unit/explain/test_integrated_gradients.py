"""Integrated gradients: adaptive steps by completeness error, Captum's fixed steps, and passes sized by memory."""

import numpy as np
import pytest
import torch
from shortcut_task import LABELS, MARKER, shortcut_model, train_smooth_model  # noqa: F401 (a fixture)

from lmforge.errors import UserError
from lmforge.explain.attribution import Explainer
from lmforge.explain.integrated_gradients import (
    GAP_FLOOR,
    MAX_STEPS,
    TOLERANCE,
    adaptive_integrated_gradients,
    largest_steps,
    new_points,
)

TEXTS = ["short", f"a much longer sentence about the {MARKER} and its people", "a city of quiet charm and wit"]


@pytest.fixture(scope="module")
def smooth_explainer():
    """tiny-bert trained briefly: p changes smoothly along the path (see test_attribution.py)."""
    model, tokenizer = train_smooth_model()
    return Explainer(model, tokenizer, LABELS, batch_size=4)


def baseline_ids(explainer, input_ids):
    return [input_ids[0]] + [explainer.pad_id] * (len(input_ids) - 2) + [input_ids[-1]]


def captum_ig(explainer, a, **options) -> np.ndarray:
    """Captum's IntegratedGradients on one text alone, on the input embeddings, from lmforge's baseline."""
    from captum.attr import IntegratedGradients

    ids = torch.tensor([a.input_ids])
    embed = explainer.model.get_input_embeddings()
    with torch.no_grad():
        inputs, baseline = embed(ids), embed(torch.tensor([baseline_ids(explainer, a.input_ids)]))
    raw = IntegratedGradients(explainer.probabilities_of_embeddings).attribute(
        inputs, baselines=baseline, target=a.target, additional_forward_args=(torch.ones_like(ids),), **options
    )
    scores = raw.sum(-1)[0].detach().numpy()
    scores[[0, -1]] = 0
    return scores


def true_error(explainer, a) -> float:
    """The relative completeness error recomputed from the model: |sum - (p(x) - p(baseline))| / |gap|."""
    gap = a.probabilities[a.target] - explainer.probabilities([baseline_ids(explainer, a.input_ids)])[0, a.target]
    return abs(a.piece_scores.sum() - gap) / max(abs(gap), GAP_FLOOR)


def test_fixed_steps_are_captums_integrated_gradients(smooth_explainer):
    """ig_steps=50 in a batch of texts of different lengths: Captum's default rule (Gauss-Legendre, 50
    steps) on each text alone."""
    for a in smooth_explainer.explain(TEXTS, "ig", ig_steps=50):
        expected = captum_ig(smooth_explainer, a, n_steps=50)
        assert np.abs(expected).max() > 1e-4  # scores of ordinary size
        assert np.allclose(a.piece_scores, expected, rtol=1e-4, atol=1e-6)
        assert a.ig_steps == 50
        assert a.ig_completeness_error == pytest.approx(true_error(smooth_explainer, a), abs=1e-4)


def test_adaptive_steps_are_the_trapezoid_rule_on_the_steps_used(smooth_explainer):
    """Refined to 16 steps (tolerance 0 runs to the cap), the doubling having reused the 9 points of 8 steps:
    Captum's riemann_trapezoid on the same 17 points, whose weights are 1/17 (1/34 at the ends) where the
    trapezoid rule's are 1/16 (1/32): the same sum, scaled by 17/16."""
    for a in smooth_explainer.explain(TEXTS, "ig", ig_tolerance=0, ig_max_steps=16):
        assert a.ig_steps == 16
        expected = captum_ig(smooth_explainer, a, n_steps=17, method="riemann_trapezoid") * 17 / 16
        assert np.allclose(a.piece_scores, expected, rtol=1e-4, atol=1e-6)


def test_adaptive_steps_meet_the_tolerance_or_report_the_cap(smooth_explainer, shortcut_model):
    """On both fixtures: each text's reported error is the true one, and it is within the tolerance
    unless the text used the cap. The shortcut model jumps from one label to the other within a sliver of
    the path: its texts with the marker need more steps than the smooth model's."""
    model, tokenizer, texts, labels = shortcut_model
    shortcut = Explainer(model, tokenizer, LABELS, batch_size=4)
    with_marker = [t for t, y in zip(texts, labels) if y == 1][:2]
    cap = 64
    steps = {}
    for name, explainer, chosen in (("smooth", smooth_explainer, TEXTS), ("shortcut", shortcut, with_marker)):
        attributions = explainer.explain(chosen, "ig", ig_max_steps=cap)
        for a in attributions:
            assert a.ig_completeness_error == pytest.approx(true_error(explainer, a), rel=1e-3, abs=1e-4)
            assert a.ig_completeness_error <= TOLERANCE or a.ig_steps == cap, (name, a.text)
        steps[name] = [a.ig_steps for a in attributions]
    assert max(steps["smooth"]) < min(steps["shortcut"])
    assert max(steps["smooth"]) <= 16  # a smooth path: 5% within 16 steps, not the 50 of fixed steps


def test_a_nearly_linear_path_stops_at_the_first_steps_and_a_steep_one_refines():
    """On functions with known integrals: f = w . x is integrated exactly by 8 steps; a steep sigmoid
    needs more, and each text of the batch stops on its own."""
    torch.manual_seed(0)
    inputs, baselines = torch.randn(2, 5, 3), torch.zeros(2, 5, 3)
    w = torch.randn(5, 3)

    def output(points, mask, text):  # text 0: linear; text 1: sigmoid(20 (w . x - c)) with c mid-path
        linear = (points * w).sum((1, 2))
        centre = 0.5 * (inputs[1] * w).sum()
        return torch.where(text == 0, linear, torch.sigmoid(20 * (linear - centre)))

    mask = torch.ones(2, 5)
    scores, steps, errors = adaptive_integrated_gradients(output, inputs, baselines, mask, [5, 5], tolerance=0.01)
    assert steps[0] == 8 and errors[0] < 1e-5
    assert steps[1] > 8 and errors[1] <= 0.01
    assert torch.allclose(scores[0], (inputs[0] * w).sum(-1), atol=1e-5)  # linear f: IG is x . w exactly
    gap = float(output(inputs[1:], mask[1:], torch.tensor([1])) - output(baselines[1:], mask[1:], torch.tensor([1])))
    assert abs(float(scores[1].sum()) - gap) <= 0.01 * abs(gap)


def test_doubling_reuses_every_earlier_point():
    seen = set(new_points(0))
    assert len(seen) == 9 and {0.0, 1.0} <= seen
    for steps in (8, 16, 32):
        fresh = new_points(steps)
        assert len(fresh) == steps and not seen & set(fresh)  # only new points, as many as the steps
        seen |= set(fresh)
        assert seen == {k / (2 * steps) for k in range(2 * steps + 1)}
    assert largest_steps(MAX_STEPS) == 256 and largest_steps(300) == 256 and largest_steps(8) == 8


def count_gradient_passes(explainer, call) -> int:
    """Forward passes of the model made with gradients on (the IG passes; probabilities run without)."""
    passes = []
    handle = explainer.model.register_forward_hook(lambda *_: passes.append(torch.is_grad_enabled()))
    try:
        call()
    finally:
        handle.remove()
    return sum(passes)


def test_a_short_texts_steps_run_in_one_pass_and_a_tight_budget_changes_no_score(smooth_explainer):
    """Fixed steps: one pass for one short text (before, five of 10 rows); with a budget that forces a pass
    of 12 rows, and with the earlier passes of batch_size x 10 rows, the same scores."""
    explainer = smooth_explainer
    assert count_gradient_passes(explainer, lambda: explainer.explain(["a warm film"], "ig", ig_steps=50)) == 1
    wide = explainer.explain(TEXTS, "ig", ig_steps=50)
    tight = Explainer(explainer.model, explainer.tokenizer, LABELS, batch_size=4, ig_tokens_per_pass=64)
    assert count_gradient_passes(tight, lambda: tight.explain(["a warm film"], "ig", ig_steps=50)) == 5
    narrow = tight.explain(TEXTS, "ig", ig_steps=50)
    for a, b in zip(wide, narrow):
        assert np.allclose(a.piece_scores, b.piece_scores, rtol=1e-5, atol=1e-8)
    # before: Captum's IntegratedGradients on the batch, internal_batch_size = batch_size x 10 rows
    from captum.attr import IntegratedGradients

    from lmforge.explain.attribution import pad_batch

    order = sorted(range(len(TEXTS)), key=lambda i: len(wide[i].input_ids))
    ids, mask = pad_batch([wide[i].input_ids for i in order], explainer.pad_id, "cpu")
    base = ids.clone()
    for row, i in enumerate(order):
        base[row, 1 : len(wide[i].input_ids) - 1] = explainer.pad_id
    embed = explainer.model.get_input_embeddings()
    with torch.no_grad():
        inputs, baseline = embed(ids), embed(base)
    before = IntegratedGradients(explainer.probabilities_of_embeddings).attribute(
        inputs,
        baselines=baseline,
        target=torch.tensor([wide[i].target for i in order]),
        additional_forward_args=(mask,),
        n_steps=50,
        internal_batch_size=explainer.batch_size * 10,
    )
    before = before.sum(-1).detach().numpy()
    for row, i in enumerate(order):
        expected = before[row, : len(wide[i].input_ids)].copy()
        expected[[0, -1]] = 0
        assert np.allclose(wide[i].piece_scores, expected, rtol=1e-5, atol=1e-8)


def test_adaptive_steps_do_not_depend_on_the_pass_budget(smooth_explainer):
    """Passes of about 7 rows (100 row-tokens) give the steps and scores of one pass per round."""
    explainer = smooth_explainer
    tight = Explainer(explainer.model, explainer.tokenizer, LABELS, batch_size=4, ig_tokens_per_pass=100)
    for a, b in zip(explainer.explain(TEXTS, "ig"), tight.explain(TEXTS, "ig")):
        assert a.ig_steps == b.ig_steps
        assert np.allclose(a.piece_scores, b.piece_scores, rtol=1e-5, atol=1e-8)


def test_steps_and_error_are_in_the_json_and_bad_options_are_refused(smooth_explainer):
    (a,) = smooth_explainer.explain(["a warm film"], "ig")
    row = a.to_dict()
    assert row["ig_steps"] == a.ig_steps >= 8 and row["ig_completeness_error"] == a.ig_completeness_error
    assert "ig_steps" not in smooth_explainer.explain(["a warm film"], "grad")[0].to_dict()
    for options, message in (
        ({"ig_steps": 0}, "fixed steps"),
        ({"ig_tolerance": float("nan")}, "tolerance"),
        ({"ig_tolerance": -0.1}, "tolerance"),
        ({"ig_max_steps": 4}, "max steps"),
    ):
        with pytest.raises(UserError, match=message):
            smooth_explainer.explain(["a warm film"], "ig", **options)
