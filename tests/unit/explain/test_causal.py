"""Attributions of a causal LM's answer to its prompt (explain/causal.py), on tiny-gpt2: the explained
log-probability, IG's completeness, occlusion against a direct recomputation, batching with padding,
word grouping, and the `lmforge explain` path for causal LMs."""

import json

import numpy as np
import pytest
import torch

from lmforge.cli.main import main
from lmforge.errors import UserError
from lmforge.explain.causal import PromptExplainer, encode_prompt, word_of_pieces, word_texts
from lmforge.generation.generate import HFGenerator
from lmforge.generation.sampling import SamplingParams
from lmforge.models.causal_lm import is_causal_lm, load_causal_lm, tiny_gpt2

PROMPTS = ["what is the capital of France ?\nA:", "the movie was", "a city of quiet charm and wit , it"]
ANSWERS = [" Paris", " great fun", " is a"]


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny-gpt2", seed=3)


@pytest.fixture(scope="module")
def explainer(lm):
    model, tokenizer = lm
    return PromptExplainer(model, tokenizer, batch_size=4)


def test_pieces_group_into_words_at_space_marks_and_line_breaks():
    gpt2 = ["what", "Ġis", "Ġcap", "it", "al", "Ġ?", "Ċ", "A", ":", "Ġ", "x"]
    assert word_of_pieces(gpt2, [False] * len(gpt2)) == [0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 6]
    gemma = ["<bos>", "Q", ":", "▁", "2", "+", "3", "?", "\n\n", "A", ":", "▁naïve"]
    special = [True] + [False] * (len(gemma) - 1)
    assert word_of_pieces(gemma, special) == [-1, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3, 4]
    llama = ["<s>", "▁Hi", "<0x0A>", "there"]  # byte fallback newline
    assert word_of_pieces(llama, [True, False, False, False]) == [-1, 0, 1, 2]


def test_word_texts_decode_bytes_and_show_whitespace(lm):
    _, tokenizer = lm
    e = encode_prompt(tokenizer, "Q: 2+3?\n\nA: naïve café, x ", " 5")
    assert e.words == ["Q:", "2+3?", "\\n", "\\n", "A:", "naïve", "café,", "x", "␣"]
    assert e.prompt_ids == tokenizer("Q: 2+3?\n\nA: naïve café, x ")["input_ids"]
    assert e.answer_ids == tokenizer(" 5", add_special_tokens=False)["input_ids"]
    assert word_texts(tokenizer, ["Ġgreat", "Ġfun"], [0, 1]) == ["great", "fun"]


def test_the_explained_value_is_the_teacher_forced_answer_log_probability(explainer, lm):
    model, tokenizer = lm
    (a,) = explainer.explain([PROMPTS[1]], [ANSWERS[1]], "gradxinput")
    ids = torch.tensor([a.input_ids + a.answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)  # (T + A, V)
    start = len(a.input_ids) - 1  # the last prompt position predicts the first answer token
    expected = [log_probs[start + t, token].item() for t, token in enumerate(a.answer_ids)]
    assert a.token_log_probs == pytest.approx(expected, abs=1e-5)
    assert a.log_prob == pytest.approx(sum(expected), abs=1e-5)
    (m,) = explainer.explain([PROMPTS[1]], [ANSWERS[1]], "gradxinput", reduction="mean")
    assert m.log_prob == pytest.approx(sum(expected) / len(expected), abs=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_integrated_gradients_is_complete(explainer, reduction):
    """Sundararajan et al. 2017, proposition 1: IG adds up to f(prompt) - f(baseline prompt), here with the
    baseline (every prompt piece -> <pad>) and the answer held fixed; for the total and each answer token."""
    (a,) = explainer.explain([PROMPTS[0]], [ANSWERS[0]], "ig", reduction=reduction, per_token=True)
    assert a.baseline_token == "<pad>"
    baseline = [explainer.baseline_id if w >= 0 else i for i, w in zip(a.input_ids, a.piece_word)]
    (base,) = explainer.answer_log_probs([baseline], [a.answer_ids])
    gap = a.log_prob - explainer.reduce(base, reduction)
    assert abs(gap) > 1e-3  # a random model moves little, but clearly more than IG's error
    assert a.piece_scores.sum() == pytest.approx(gap, rel=0.02)
    assert a.token_scores.sum(1) == pytest.approx(a.token_log_probs - base, rel=0.02, abs=1e-4)


def test_occlusion_is_the_change_when_one_piece_becomes_the_baseline(explainer):
    (a,) = explainer.explain([PROMPTS[0]], [ANSWERS[0]], "occlusion")
    for t in range(len(a.input_ids)):
        occluded = list(a.input_ids)
        occluded[t] = explainer.baseline_id
        (lp,) = explainer.answer_log_probs([occluded], [a.answer_ids])
        assert a.piece_scores[t] == pytest.approx(a.log_prob - lp.sum(), abs=1e-5)
        assert a.token_scores[:, t] == pytest.approx(a.token_log_probs - lp, abs=1e-5)
    assert np.allclose(a.word_scores.sum(), a.piece_scores.sum())


def test_only_prompt_pieces_are_scored_and_batching_changes_nothing(lm):
    """Prompts of different lengths (left-padded) and answers of different lengths (right-padded) in one
    batch get what each gets alone."""
    model, tokenizer = lm
    batched = PromptExplainer(model, tokenizer, batch_size=4)
    alone = PromptExplainer(model, tokenizer, batch_size=1)
    for method in ("grad", "gradxinput", "ig", "occlusion"):
        together = batched.explain(PROMPTS, ANSWERS, method, per_token=True, n_steps=8)
        for prompt, answer, a in zip(PROMPTS, ANSWERS, together):
            (b,) = alone.explain([prompt], [answer], method, per_token=True, n_steps=8)
            assert a.prompt == prompt and a.answer == answer
            assert a.input_ids == tokenizer(prompt)["input_ids"] and a.pieces == b.pieces
            assert a.piece_scores.shape == (len(a.input_ids),)  # the prompt's pieces, no answer token
            assert a.token_scores.shape == (len(a.answer_ids), len(a.input_ids))
            assert np.allclose(a.piece_scores, b.piece_scores, atol=1e-5), method
            assert np.allclose(a.token_scores, b.token_scores, atol=1e-5), method
            assert np.allclose(a.token_log_probs, b.token_log_probs, atol=1e-6)


def test_linear_methods_add_up_over_answer_tokens(explainer):
    for method in ("gradxinput", "ig", "occlusion"):
        (a,) = explainer.explain([PROMPTS[2]], [ANSWERS[2]], method, per_token=True, n_steps=8)
        assert np.allclose(a.token_scores.sum(0), a.piece_scores, atol=1e-5), method
        (m,) = explainer.explain([PROMPTS[2]], [ANSWERS[2]], method, reduction="mean", per_token=True, n_steps=8)
        assert np.allclose(m.token_scores.mean(0), m.piece_scores, atol=1e-5), method
    (g,) = explainer.explain([PROMPTS[2]], [ANSWERS[2]], "grad")
    assert (g.piece_scores >= 0).all() and g.token_scores is None


def test_without_an_answer_the_greedy_completion_is_explained(explainer, lm):
    model, tokenizer = lm
    params = SamplingParams(max_new_tokens=6, stop=(" the",))
    expected = HFGenerator(model, tokenizer).generate([PROMPTS[1]], params)[0][0].text
    (a,) = explainer.explain([PROMPTS[1]], None, "grad", max_new_tokens=6, stop=(" the",))
    assert a.answer == expected and a.answer.strip()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "lime"}, "not available for a causal LM"),
        ({"answers": [" a", " b"]}, "2 answers for 1 prompts"),
        ({"answers": [""]}, "is empty"),
        ({"reduction": "max"}, "reduction"),
    ],
)
def test_bad_requests_are_user_errors(explainer, kwargs, message):
    with pytest.raises(UserError, match=message):
        explainer.explain([PROMPTS[1]], **{"answers": [" great"], **kwargs})


def test_causal_lms_are_told_from_classifiers(tmp_path):
    assert is_causal_lm("tiny-gpt2") and is_causal_lm("gemma-3-270m")
    model, tokenizer = tiny_gpt2()
    model.save_pretrained(tmp_path / "run" / "final")
    (tmp_path / "run" / "config.yaml").write_text("method: finetune\n")
    assert is_causal_lm(str(tmp_path / "run")) and is_causal_lm(str(tmp_path / "run" / "final"))
    assert not is_causal_lm(str(tmp_path / "missing")) and not is_causal_lm("minilm")
    (tmp_path / "plain").mkdir()
    for config, causal in [
        ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, False),
        ({"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2"}, False),
        ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}, True),
        ({"model_type": "llama"}, True),
        ({"model_type": "bert"}, False),  # bert has a masked-LM head too: not taken for a causal LM
        ({"model_type": "bert", "is_decoder": True}, True),
    ]:
        (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
        assert is_causal_lm(str(tmp_path / "plain")) == causal, config
    (tmp_path / "lora" / "final").mkdir(parents=True)  # a LoRA run: final/ holds an adapter, no config.json
    for task_type, causal in [("CAUSAL_LM", True), ("SEQ_CLS", False)]:
        (tmp_path / "lora" / "final" / "adapter_config.json").write_text(json.dumps({"task_type": task_type}))
        assert (
            is_causal_lm(str(tmp_path / "lora")) == causal and is_causal_lm(str(tmp_path / "lora" / "final")) == causal
        )


def test_cli_explains_a_prompt_of_a_causal_lm(tmp_path, capsys):
    page = tmp_path / "page.html"
    args = ["explain", "tiny-gpt2", "the movie was", "--answer", " great", "--method", "occlusion"]
    assert main([*args, "--html", str(page), "--per-token"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[48;2;" in out and "great" in out and "occlusion: log p(answer | prompt)" in out
    html = page.read_text()
    assert "movie" in html and "per word piece" in html and "per answer token" in html
    assert main([*args[:3], "--answer", " great", "--json", "--html", str(page)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["method"] == "ig" and row["words"] == ["the", "movie", "was"] and row["answer"] == " great"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "lime"], "a causal LM is explained with grad, gradxinput, ig, occlusion"),
        (["--target", "positive"], "--target applies to classifier runs"),
        (["--answer", " a", "--answer", " b"], "2 --answer for 1 prompts"),
    ],
)
def test_cli_bad_causal_requests_exit_2(tmp_path, capsys, extra, message):
    assert main(["explain", "tiny-gpt2", "the movie was", *extra, "--html", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
