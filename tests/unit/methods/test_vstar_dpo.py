import math

import pytest
import torch

from lmforge.data.pairs import Encoded, Pair, Pairs, collate, encode_pair, encode_pairs
from lmforge.methods.vstar.dpo import (
    completion_logprobs,
    dpo_loss,
    fingerprint,
    load_reference,
    reference_logprobs,
    save_reference,
)
from lmforge.models.causal_lm import tiny_gpt2

# (prompt, correct completion, incorrect completion), of unequal lengths
TRIPLES = [
    ("Question: what is two plus two?\nAnswer:", " four", " five, I think"),
    ("Is the movie good?", " yes, it is a great film with a fine cast", " no"),
    ("Name a colour:", " red", " the number seven"),
]


@pytest.fixture(scope="module")
def models():
    """A verifier (seed 0) and a different reference (seed 1), both in eval mode (no dropout)."""
    policy, tokenizer = tiny_gpt2(seed=0)
    reference, _ = tiny_gpt2(seed=1)
    return policy.eval(), reference.eval(), tokenizer


def encode(tokenizer, column: int) -> Encoded:
    pairs = Pairs([Pair(t[0], t[column], f"t{i}") for i, t in enumerate(TRIPLES)], "triples")
    return encode_pairs(tokenizer, pairs, max_length=1024)[1]


def batch_logprobs(model, encoded: Encoded, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = collate(encoded.ids, encoded.prompt_lengths, pad_id)
    labels = inputs.pop("labels")
    return completion_logprobs(model, inputs, labels)


def by_hand(model, ids: list[int], prompt_length: int) -> float:
    """log p(completion + EOS | prompt) from the full, unpadded logits, one token at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(prompt_length, len(ids)))


# ---- completion_logprobs ----------------------------------------------------------------------------


def test_completion_logprobs_equal_a_loop_over_full_logits(models):
    policy, _, tokenizer = models
    for column in (1, 2):
        encoded = encode(tokenizer, column)
        assert len({len(x) for x in encoded.ids}) == 3  # unequal lengths: the batch is padded
        sums, counts = batch_logprobs(policy, encoded, tokenizer.pad_token_id)
        assert sums.shape == counts.shape == (3,) and sums.dtype == torch.float32
        for i, triple in enumerate(TRIPLES):
            completion = tokenizer(triple[column], add_special_tokens=False)["input_ids"]
            assert counts[i].item() == len(completion) + 1  # the completion and its EOS
            assert encoded.ids[i][-1] == tokenizer.eos_token_id
            assert sums[i].item() == pytest.approx(by_hand(policy, encoded.ids[i], encoded.prompt_lengths[i]), abs=1e-4)
        assert (sums < 0).all()


def test_completion_logprobs_are_differentiable(models):
    policy, _, tokenizer = models
    policy.zero_grad(set_to_none=True)
    sums, _ = batch_logprobs(policy, encode(tokenizer, 1), tokenizer.pad_token_id)
    sums.sum().backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert policy.lm_head.weight.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)


# ---- dpo_loss ---------------------------------------------------------------------------------------


def test_dpo_loss_matches_trl_dpo_trainer(models, tmp_path):
    """trl's DPOTrainer (loss_type="sigmoid") on the same 3 triples and the same two models: the same tokens,
    the same four sequence log-probabilities, the same loss, rewards and gradient."""
    from datasets import Dataset  # imported here: trl takes seconds to import
    from trl import DPOConfig, DPOTrainer

    tokenizer = models[2]
    # models of their own: the trainer patches their forward (a fused output layer, accelerate's wrappers)
    policy, reference = tiny_gpt2(seed=0)[0].eval(), tiny_gpt2(seed=1)[0].eval()
    beta = 0.3
    dataset = Dataset.from_dict(
        {"prompt": [t[0] for t in TRIPLES], "chosen": [t[1] for t in TRIPLES], "rejected": [t[2] for t in TRIPLES]}
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        loss_type="sigmoid",
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=3,
        max_length=None,
        precompute_ref_log_probs=False,
        bf16=False,  # trl's default is True, which runs both models under bfloat16 autocast, on the CPU too
    )
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    chosen, rejected = encode(tokenizer, 1), encode(tokenizer, 2)
    rows = [trainer.train_dataset[i] for i in range(len(TRIPLES))]
    for i, row in enumerate(rows):  # trl tokenises the triples exactly as encode_pairs does
        assert row["prompt_ids"] + row["chosen_ids"] == chosen.ids[i]
        assert row["prompt_ids"] + row["rejected_ids"] == rejected.ids[i]
        assert len(row["prompt_ids"]) == chosen.prompt_lengths[i] == rejected.prompt_lengths[i]

    policy.eval()
    reference.eval()
    policy.zero_grad(set_to_none=True)
    theirs = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    theirs.backward()
    their_grad = policy.lm_head.weight.grad.clone()
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # eval mode: logged under "eval"

    policy.zero_grad(set_to_none=True)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        ref_chosen, ref_rejected = (
            batch_logprobs(reference, chosen, pad)[0],
            batch_logprobs(reference, rejected, pad)[0],
        )
    policy_chosen, policy_rejected = batch_logprobs(policy, chosen, pad)[0], batch_logprobs(policy, rejected, pad)[0]
    ours, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    ours.backward()

    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(ours.item() - math.log(2)) > 1e-3  # the two models differ: not the trivial value
    assert torch.allclose(policy.lm_head.weight.grad, their_grad, atol=1e-6)
    assert policy_chosen.mean().item() == pytest.approx(metrics["logps/chosen"], abs=1e-4)
    assert policy_rejected.mean().item() == pytest.approx(metrics["logps/rejected"], abs=1e-4)
    for ours_key, trl_key in [
        ("reward_chosen", "rewards/chosen"),
        ("reward_rejected", "rewards/rejected"),
        ("reward_accuracy", "rewards/accuracies"),
        ("reward_margin", "rewards/margins"),
    ]:
        assert stats[ours_key].item() == pytest.approx(metrics[trl_key], abs=1e-5)
        assert not stats[ours_key].requires_grad
    policy.zero_grad(set_to_none=True)


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    torch.manual_seed(0)
    chosen, rejected = -10 * torch.rand(5), -10 * torch.rand(5)  # (B,)
    loss, stats = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats["reward_margin"].item() == 0 and stats["reward_accuracy"].item() == 0


def test_dpo_loss_falls_as_the_chosen_margin_grows():
    reference_chosen, reference_rejected = torch.tensor([-12.0, -7.0]), torch.tensor([-9.0, -15.0])
    losses, accuracies = [], []
    for shift in (-2.0, 0.0, 1.0, 3.0, 10.0):  # the verifier raises the correct completions' log-probability
        loss, stats = dpo_loss(reference_chosen + shift, reference_rejected, reference_chosen, reference_rejected, 0.1)
        losses.append(loss.item())
        accuracies.append(stats["reward_accuracy"].item())
        assert stats["reward_chosen"].item() == pytest.approx(0.1 * shift)
        assert stats["reward_rejected"].item() == 0
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert losses[1] == pytest.approx(math.log(2)) and losses[-1] < 0.35
    assert accuracies == [0.0, 0.0, 1.0, 1.0, 1.0]
    # larger beta: the same margin counts more
    small = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)[0]
    large = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)[0]
    assert large.item() < small.item()


# ---- reference log-probabilities --------------------------------------------------------------------


def test_reference_logprobs_do_not_depend_on_the_batch_size_and_keep_the_order(models):
    _, reference, tokenizer = models
    chosen, rejected = encode(tokenizer, 1), encode(tokenizer, 2)
    encoded = Encoded(chosen.ids + rejected.ids, chosen.prompt_lengths + rejected.prompt_lengths)  # 6 completions
    reference.train()  # reference_logprobs switches to eval mode (no dropout) and back
    one = reference_logprobs(reference, encoded, tokenizer.pad_token_id, batch_size=1, device="cpu")
    assert reference.training
    reference.eval()
    expected = [by_hand(reference, encoded.ids[i], encoded.prompt_lengths[i]) for i in range(len(encoded))]
    assert one.tolist() == pytest.approx(expected, abs=1e-4)  # the original order, not the length order
    assert sorted(range(6), key=lambda i: len(encoded.ids[i])) != list(range(6))  # so the order is tested
    for batch_size in (2, 4, 6, 50):
        batched = reference_logprobs(reference, encoded, tokenizer.pad_token_id, batch_size, "cpu")
        assert batched.shape == (6,) and not batched.requires_grad
        assert torch.allclose(batched, one, atol=1e-5)


def test_reference_cache_round_trip_and_stale_fingerprint(models, tmp_path):
    _, reference, tokenizer = models
    encoded = encode(tokenizer, 1)
    values = reference_logprobs(reference, encoded, tokenizer.pad_token_id, 2, "cpu")
    key = fingerprint(encoded, "tiny-gpt2")
    path = tmp_path / "cache" / "reference.pt"
    assert load_reference(path, key) is None  # no cache yet
    save_reference(path, values, key)
    assert [p.name for p in path.parent.iterdir()] == ["reference.pt"]  # no temporary file left behind
    assert torch.equal(load_reference(path, key), values)
    assert load_reference(path, fingerprint(encoded, "another-model")) is None
    changed = Encoded([list(x) for x in encoded.ids], list(encoded.prompt_lengths))
    changed.ids[1][-2] = (changed.ids[1][-2] + 1) % len(tokenizer)  # one token of one completion
    assert load_reference(path, fingerprint(changed, "tiny-gpt2")) is None
    moved = Encoded(encoded.ids, [n + 1 for n in encoded.prompt_lengths])  # same tokens, other supervised span
    assert load_reference(path, fingerprint(moved, "tiny-gpt2")) is None
    assert fingerprint(encoded, "tiny-gpt2") == key  # deterministic


# ---- score_candidates -----------------------------------------------------------------------------


def test_test_time_scores_come_from_the_verifier_and_use_g_sft_only_as_the_reward_reference(models, tmp_path):
    """score_candidates(verifier, G_SFT, ...): likelihood is log V(y|x), never log G_SFT(y|x); the implicit
    reward is beta * (log V - log G_SFT). The two tiny models differ, so swapping them would fail."""
    from types import SimpleNamespace

    from lmforge.methods.vstar.verifier import score_candidates

    policy, reference, tokenizer = models
    folders = {}
    for name, model in (("verifier", policy), ("gsft", reference)):
        folders[name] = tmp_path / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    prompts = {f"t{i}": t[0] for i, t in enumerate(TRIPLES)}
    samples = [SimpleNamespace(problem_id=f"t{i}", index=j, completion=t[1 + j], passed=j == 0)
               for i, t in enumerate(TRIPLES) for j in (0, 1)]  # fmt: skip
    rows = score_candidates(folders["verifier"], folders["gsft"], prompts, samples, "", beta=0.1, batch_size=2)
    assert [(r["problem_id"], r["index"]) for r in rows] == [(s.problem_id, s.index) for s in samples]
    for row, s in zip(rows, samples):
        ids, prompt_length = encode_pair(tokenizer, prompts[s.problem_id], s.completion, 1024)[:2]
        log_v, log_g = by_hand(policy, ids, prompt_length), by_hand(reference, ids, prompt_length)
        assert abs(log_v - log_g) > 1e-3  # 10x the tolerance below: the two models tell the scores apart
        assert row["likelihood"] == pytest.approx(log_v, abs=1e-4)
        assert row["mean_likelihood"] == pytest.approx(log_v / row["tokens"], abs=1e-5)
        assert row["implicit_reward"] == pytest.approx(0.1 * (log_v - log_g), abs=1e-5)
        assert row["tokens"] == len(ids) - prompt_length
