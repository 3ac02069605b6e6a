"""The ORM baseline's loss and scores against independent computations: a hand-built logistic head on the
hidden states the LM itself reports, the LM's own full logits, and transformers' sequence classifier."""

import math
from dataclasses import dataclass

import pytest
import torch

from lmforge.data.pairs import collate
from lmforge.methods.vstar.orm import OutcomeRewardModel, orm_loss
from lmforge.methods.vstar.stages import encode_solutions
from lmforge.models.causal_lm import tiny_gpt2


@dataclass
class Solution:
    problem_id: str
    completion: str
    passed: bool


PROMPTS = {"a": "Question: what is two plus two?\nAnswer:", "b": "Name a colour:"}
SOLUTIONS = [  # unequal lengths, both labels, two problems
    Solution("a", " four", True),
    Solution("a", " five, I think, or maybe six", False),
    Solution("b", " red", True),
    Solution("b", " the number seven", False),
]


@pytest.fixture(scope="module")
def orm():
    """An ORM on a random tiny GPT-2 with a random (not zero) head, in eval mode, and its tokenizer."""
    lm, tokenizer = tiny_gpt2(seed=0)
    model = OutcomeRewardModel(lm).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.score_head.weight.copy_(torch.randn(model.score_head.weight.shape, generator=generator))
        model.score_head.bias.fill_(0.3)
    return model, tokenizer


def by_hand(model: OutcomeRewardModel, ids: list[int], prompt_length: int) -> tuple[float, list[float]]:
    """(logit of "correct", the completion tokens' -log p) of one unpadded solution, in float64: the head
    applied by hand to the last hidden state the LM returns, and a loop over the LM's full logits."""
    with torch.no_grad():
        out = model.lm(input_ids=torch.tensor([ids]), output_hidden_states=True)
    last = out.hidden_states[-1][0, -1].double()  # (H,): the EOS's hidden state
    w, b = model.score_head.weight[0].detach().double(), model.score_head.bias[0].detach().double()
    logit = float(sum(w[i] * last[i] for i in range(len(last))) + b)
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)  # (T, V)
    return logit, [-logp[t - 1, ids[t]].item() for t in range(prompt_length, len(ids))]


def bce(logit: float, label: bool) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(math.log(p) if label else math.log(1 - p))


@pytest.mark.parametrize("with_lm", [True, False])
def test_orm_loss_equals_a_hand_computation(orm, with_lm):
    model, tokenizer = orm
    data = encode_solutions(tokenizer, PROMPTS, SOLUTIONS, "")
    assert len({len(x) for x in data.ids}) == 4  # unequal lengths: the batch is padded
    hand = [by_hand(model, data.ids[i], data.prompt_lengths[i]) for i in range(4)]
    expected_bce = sum(bce(logit, s.passed) for (logit, _), s in zip(hand, SOLUTIONS)) / 4
    token_losses = [x for _, losses in hand for x in losses]
    assert len(token_losses) == sum(data.targets(i) for i in range(4))  # completion tokens and EOS
    expected_lm = sum(token_losses) / len(token_losses)  # every token weighs the same, as SFT's loss

    passed = torch.tensor([float(s.passed) for s in SOLUTIONS])
    inputs = collate(data.ids, data.prompt_lengths, tokenizer.pad_token_id)
    parts, scores = orm_loss(model, inputs, passed, 4, len(token_losses), with_lm)
    assert scores.tolist() == pytest.approx([logit for logit, _ in hand], abs=1e-5)
    assert parts["classification"].item() == pytest.approx(expected_bce, abs=1e-5)
    if with_lm:
        assert parts["lm"].item() == pytest.approx(expected_lm, abs=1e-5)
    else:
        assert set(parts) == {"classification"}

    # two micro-batches of one step, each divided by the whole step's counts, sum to the same step loss
    halves = [orm_loss(model, collate([data.ids[i] for i in rows], [data.prompt_lengths[i] for i in rows],
                                      tokenizer.pad_token_id), passed[rows], 4, len(token_losses), with_lm)[0]
              for rows in ([0, 2], [1, 3])]  # fmt: skip
    for name in parts:
        assert halves[0][name].item() + halves[1][name].item() == pytest.approx(parts[name].item(), abs=1e-5)


def test_the_lm_term_trains_the_body_even_while_the_head_is_zero():
    lm, tokenizer = tiny_gpt2(seed=0)
    model = OutcomeRewardModel(lm).train()  # a fresh head: zero weights, every solution at probability 0.5
    data = encode_solutions(tokenizer, PROMPTS, SOLUTIONS, "")
    inputs = collate(data.ids, data.prompt_lengths, tokenizer.pad_token_id)
    passed = torch.tensor([float(s.passed) for s in SOLUTIONS])
    grads = {}
    for with_lm in (False, True):
        model.zero_grad(set_to_none=True)
        parts, _ = orm_loss(model, inputs, passed, 4, sum(data.targets(i) for i in range(4)), with_lm)
        sum(parts.values()).backward()
        grads[with_lm] = model.lm.transformer.h[0].attn.c_attn.weight.grad
    assert grads[False] is None or grads[False].abs().max() == 0  # the zero head passes no gradient back
    assert grads[True].abs().max() > 0


def test_orm_scores_equal_transformers_sequence_classifier_on_the_same_weights(orm):
    """GPT2ForSequenceClassification reads the last non-padding token's hidden state with a bias-free linear
    head: with our weights and bias 0 it must give our logits."""
    from transformers import GPT2ForSequenceClassification

    model, tokenizer = orm
    reference = GPT2ForSequenceClassification(
        model.lm.config.__class__(**{**model.lm.config.to_dict(), "num_labels": 1})
    )
    reference.transformer.load_state_dict(model.lm.transformer.state_dict())
    with torch.no_grad():
        reference.score.weight.copy_(model.score_head.weight)
    reference.eval()
    data = encode_solutions(tokenizer, PROMPTS, SOLUTIONS, "")
    inputs = collate(data.ids, data.prompt_lengths, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = model(inputs["input_ids"], inputs["attention_mask"]) - model.score_head.bias
        theirs = reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0]
    assert ours.tolist() == pytest.approx(theirs.tolist(), abs=1e-5)
    assert ours.std() > 1e-3  # the solutions get different scores: the comparison is not vacuous
