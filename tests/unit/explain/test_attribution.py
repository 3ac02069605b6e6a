import numpy as np
import pytest
import torch
from shortcut_task import LABELS, MARKER, shortcut_model, train_smooth_model  # noqa: F401 (a fixture)

from lmforge.errors import UserError
from lmforge.explain.attribution import (
    SMOOTHGRAD_NOISE,
    SMOOTHGRAD_SAMPLES,
    Explainer,
    attention_rollout,
    text_seed,
)
from lmforge.explain.methods import METHODS, UNSIGNED_METHODS
from lmforge.explain.words import encode_text, word_sums
from lmforge.models.classifier import load_classifier, tiny_bert_tokenizer


@pytest.fixture(scope="module")
def explainer(shortcut_model):
    model, tokenizer, _, _ = shortcut_model
    return Explainer(model, tokenizer, LABELS, batch_size=4)


@pytest.fixture(scope="module")
def smooth_explainer():
    """tiny-bert trained briefly on the shortcut task: p changes smoothly with the input, so gradients are
    not saturated (the shortcut model's are about 1e-8) and tests compare scores of ordinary size."""
    model, tokenizer = train_smooth_model()
    return Explainer(model, tokenizer, LABELS, batch_size=4)


def test_encode_text_maps_pieces_back_to_the_words_of_the_text():
    e = encode_text(tiny_bert_tokenizer(), "Hello, unbelievable world!", 64)
    assert e.words == ["Hello", ",", "unbelievable", "world", "!"]
    assert e.pieces[0] == "[CLS]" and e.pieces[-1] == "[SEP]"
    assert e.piece_word[0] == -1 and e.piece_word[-1] == -1
    assert sorted(set(e.piece_word[1:-1])) == [0, 1, 2, 3, 4]
    assert e.piece_word.count(2) > 1  # "unbelievable" is several pieces in the tiny vocabulary
    assert list(e.content) == list(range(1, len(e.input_ids) - 1))


def test_word_sums_add_pieces_and_skip_special_tokens():
    scores = np.array([5.0, 1.0, 2.0, 3.0, 9.0])
    assert word_sums(scores, [-1, 0, 0, 1, -1], 2).tolist() == [3.0, 3.0]


def test_rollout_matches_a_hand_computation():
    a1 = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.0, 1.0]]]])  # (B=1, heads=2, T=2, T=2)
    a2 = torch.tensor([[[[0.9, 0.1], [0.4, 0.6]], [[0.9, 0.1], [0.4, 0.6]]]])
    r1 = 0.5 * torch.tensor([[0.75, 0.25], [0.1, 0.9]]) + 0.5 * torch.eye(2)
    r2 = 0.5 * torch.tensor([[0.9, 0.1], [0.4, 0.6]]) + 0.5 * torch.eye(2)
    assert torch.allclose(attention_rollout([a1, a2])[0], r2 @ r1)  # rows already sum to 1
    assert torch.allclose(attention_rollout([a1, a2]).sum(-1), torch.ones(1, 2))


def test_faithful_methods_find_the_shortcut(explainer, shortcut_model):
    _, _, texts, labels = shortcut_model
    with_marker = [t for t, y in zip(texts, labels) if y == 1][:4]
    for method in ("ig", "occlusion", "shap", "lime"):  # gradients saturate at p ~ 1: not asked of grad
        for a in explainer.explain(with_marker, method, n_samples=80):
            assert a.target_label == "with"
            assert a.words[int(np.argmax(a.word_scores))] == MARKER, (method, a.text)


def test_every_method_scores_every_piece_and_zero_on_special_tokens(explainer):
    for method in METHODS:
        (a,) = explainer.explain([f"the {MARKER} was lovely"], method, n_samples=40)
        assert a.piece_scores.shape == (len(a.input_ids),)
        assert a.piece_scores[0] == 0 and a.piece_scores[-1] == 0
        assert np.allclose(a.word_scores.sum(), a.piece_scores.sum())
        assert np.isfinite(a.piece_scores).all()
        if method in UNSIGNED_METHODS:
            assert (a.piece_scores >= 0).all()


def test_integrated_gradients_is_complete(smooth_explainer):
    """Sundararajan et al. 2017, proposition 1: attributions add up to p(x) - p(baseline). On a model
    trained briefly, so that p changes smoothly along the path (the shortcut model jumps from 0 to 1
    within a few percent of it, which no 50-step rule integrates)."""
    explainer = smooth_explainer
    (a,) = explainer.explain(["a city of quiet charm and wit"], "ig", ig_steps=50)
    baseline = [a.input_ids[0]] + [explainer.pad_id] * (len(a.input_ids) - 2) + [a.input_ids[-1]]
    gap = float(a.probabilities[a.target] - explainer.probabilities([baseline])[0, a.target])
    assert abs(gap) > 0.01
    assert a.piece_scores.sum() == pytest.approx(gap, abs=0.02 * abs(gap) + 1e-4)


def test_kernel_shap_is_efficient(explainer):
    """Shapley values add up to p(x) - p(every word masked) (Lundberg & Lee 2017, property 1)."""
    (a,) = explainer.explain([f"plain {MARKER} story"], "shap", n_samples=300)
    masked = [a.input_ids[0]] + [explainer.mask_id] * (len(a.input_ids) - 2) + [a.input_ids[-1]]
    gap = float(a.probabilities[a.target] - explainer.probabilities([masked])[0, a.target])
    assert a.word_scores.sum() == pytest.approx(gap, abs=0.02)


def test_occlusion_is_leave_one_out_with_the_mask_token(explainer):
    (a,) = explainer.explain([f"an old {MARKER} tale"], "occlusion")
    full = a.probabilities[a.target]
    for t in range(1, len(a.input_ids) - 1):
        ids = list(a.input_ids)
        ids[t] = explainer.mask_id
        expected = full - explainer.probabilities([ids])[0, a.target]
        assert a.piece_scores[t] == pytest.approx(expected, abs=1e-5)


def test_gradient_times_input_matches_autograd(explainer):
    (a,) = explainer.explain(["a warm and funny film"], "gradxinput")
    ids = torch.tensor([a.input_ids])
    embeddings = explainer.model.get_input_embeddings()(ids).detach().requires_grad_()
    p = explainer.probabilities_of_embeddings(embeddings, torch.ones_like(ids))[0, a.target]
    p.backward()
    expected = (embeddings.grad * embeddings).sum(-1)[0].detach().numpy()
    expected[[0, -1]] = 0
    assert np.allclose(a.piece_scores, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["ig", "grad", "smoothgrad", "attention", "rollout", "occlusion", "lime"])
def test_a_batch_gives_what_each_text_gives_alone(smooth_explainer, method):
    """Padding in a batch, and the other texts in it, must not change any text's explanation (SmoothGrad's
    noise and LIME's samples are drawn per text)."""
    texts = ["short", f"a much longer sentence about the {MARKER} and its people", "mid length text here"]
    together = smooth_explainer.explain(texts, method)
    for text, a in zip(texts, together):
        (alone,) = smooth_explainer.explain([text], method)
        scale = np.abs(alone.piece_scores).max()
        assert scale > 1e-4, method  # scores of ordinary size: the tolerance below means something
        assert np.allclose(a.piece_scores, alone.piece_scores, rtol=1e-3, atol=1e-4 * scale), method


def test_target_can_be_chosen_and_must_exist(explainer):
    (a,) = explainer.explain([f"the {MARKER}"], "occlusion", target="without")
    assert a.target_label == "without"
    assert a.word_scores[a.words.index(MARKER)] < 0  # the marker speaks against "without"
    with pytest.raises(UserError, match="not one of the model's labels"):
        explainer.explain(["x"], "grad", target="maybe")
    with pytest.raises(UserError, match="unknown explanation method"):
        explainer.explain(["x"], "magic")
    with pytest.raises(UserError, match="nothing to explain"):
        explainer.explain(["  "], "grad")


def test_attention_leaves_the_model_on_its_attention_implementation():
    model, tokenizer = load_classifier("tiny-bert", LABELS)
    before = model.config._attn_implementation
    Explainer(model, tokenizer, LABELS).explain(["a film"], "rollout")
    assert model.config._attn_implementation == before


def test_random_scores_are_seeded(explainer):
    first = explainer.explain(["one two three"], "random", seed=3)[0].piece_scores
    again = explainer.explain(["one two three"], "random", seed=3)[0].piece_scores
    other = explainer.explain(["one two three"], "random", seed=4)[0].piece_scores
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_smoothgrad_is_captums_noise_tunnel_with_each_texts_own_noise_scale(smooth_explainer):
    """Smilkov et al. 2017: sigma = noise level x (max - min) of the input, here each text's own
    embeddings. For each text of a batch, Captum's NoiseTunnel over Saliency on that text alone, with
    that sigma and the text's seed in torch's generator, gives the batch's scores."""
    from captum.attr import NoiseTunnel, Saliency

    explainer = smooth_explainer
    texts = ["short", f"a much longer sentence about the {MARKER} and its people"]
    together = explainer.explain(texts, "smoothgrad", seed=7)
    sigmas = []
    for a in together:
        ids = torch.tensor([a.input_ids])
        embeddings = explainer.model.get_input_embeddings()(ids).detach()  # (1, T, D)
        sigmas.append(SMOOTHGRAD_NOISE * (embeddings.max() - embeddings.min()).item())
        torch.manual_seed(text_seed(7, a.input_ids))
        expected = NoiseTunnel(Saliency(explainer.probabilities_of_embeddings)).attribute(
            embeddings,
            nt_type="smoothgrad",
            nt_samples=SMOOTHGRAD_SAMPLES,
            stdevs=sigmas[-1],
            target=a.target,
            additional_forward_args=(torch.ones_like(ids),),
            abs=False,
        )
        expected = expected.norm(dim=-1)[0].numpy()
        expected[[0, -1]] = 0
        assert np.abs(expected).max() > 1e-4  # scores of ordinary size
        assert np.allclose(a.piece_scores, expected, rtol=1e-4, atol=1e-6)
    assert abs(sigmas[0] - sigmas[1]) > 0.01 * max(sigmas)  # the texts' scales differ: a batch-wide one would fail
