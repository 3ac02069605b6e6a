"""Log-probabilities of given token sequences under a causal LM, every position in one forward pass.

What OpenAI's legacy completions API returns for `logprobs` and `echo`
(platform.openai.com/docs/api-reference/completions: `token_logprobs`, `top_logprobs`), and what
lm-evaluation-harness's loglikelihood requests read from it (lm_eval/models/openai_completions.py,
`parse_logprobs`: the sum of `token_logprobs` over the continuation's tokens, and whether each is the
top-1 token). Token t's log-probability is log softmax(logits at t - 1)[token t]; the first token has
none (None), as in OpenAI's answers.

Sequences are right-padded into batches of `batch_size` and run through the model once, position
chunk by position chunk with the KV cache, so that the logits held at once stay under LOGIT_BUDGET
values: Gemma 3's 262,144-word vocabulary makes the logits of 8 sequences of 100 tokens 210 million
floats, more than the model itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmforge.generation.sampling import GenerationStopped

if TYPE_CHECKING:
    from lmforge.generation.generate import HFGenerator

LOGIT_BUDGET = 1 << 25  # logits of one forward pass at most (128 MB as float32)

TopTokens = list[tuple[int, float]]  # (token id, log-probability), highest first


@dataclass(frozen=True)
class ScoredSequence:
    tokens: list[int]
    """the sequence's token ids"""
    token_logprobs: list[float | None]
    """per token of the sequence, its log-probability given the tokens before it (None for the first)"""
    top: list[TopTokens | None]
    """per token, the top_k tokens of the distribution it was drawn from (None for the first)"""
    next_top: TopTokens
    """the max(1, top_k) most likely tokens after the last one: the greedy next token first"""


def score_sequences(
    generator: HFGenerator,
    sequences: Sequence[Sequence[int]],
    top_k: int,
    should_stop: Callable[[], bool] | None = None,
) -> list[ScoredSequence]:
    """The log-probabilities of every token of every sequence (token ids, each at least one), in the
    order of `sequences`. `should_stop` is asked before every forward pass (GenerationStopped when True)."""
    import torch

    if any(len(s) == 0 for s in sequences):
        raise ValueError("score_sequences: every sequence needs at least one token")
    model = generator.model
    k = max(1, top_k)
    vocab = model.config.get_text_config().vocab_size
    pad_id = generator.tokenizer.pad_token_id or 0
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths share a batch
    scored: dict[int, ScoredSequence] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), generator.batch_size):
                rows = order[start : start + generator.batch_size]
                batch = [list(sequences[i]) for i in rows]
                for i, result in zip(rows, _score_batch(generator, batch, k, vocab, pad_id, should_stop)):
                    scored[i] = result
    finally:
        model.train(was_training)
    return [scored[i] for i in range(len(sequences))]


def _score_batch(generator, batch: list[list[int]], k: int, vocab: int, pad_id: int, should_stop) -> list:
    import torch
    from transformers import DynamicCache

    model = generator.model
    lengths = [len(s) for s in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, L), right-padded
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, sequence in enumerate(batch):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = torch.arange(width, device=model.device).expand(len(batch), width)  # pads sit after the tokens
    # The next token of each position (the pad id past a row's end; those places are never read).
    targets = torch.cat([ids[:, 1:], ids.new_full((len(batch), 1), pad_id)], dim=1)  # (B, L)
    chunk = max(1, LOGIT_BUDGET // (len(batch) * vocab))
    cache = DynamicCache(config=model.config)
    token_logprobs: list[list[float | None]] = [[None] for _ in batch]
    top: list[list[TopTokens | None]] = [[None] for _ in batch]
    next_top: list[TopTokens] = [[] for _ in batch]
    for begin in range(0, width, chunk):
        end = min(width, begin + chunk)
        if should_stop and should_stop():
            raise GenerationStopped()
        out = model(
            input_ids=ids[:, begin:end],
            attention_mask=mask[:, :end],
            position_ids=positions[:, begin:end],
            use_cache=True,
            **{generator.cache_keyword: cache},
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # (B, C, V): position t predicts token t + 1
        chosen = logprobs.gather(-1, targets[:, begin:end, None]).squeeze(-1).tolist()  # (B, C)
        top_values, top_ids = (t.tolist() for t in logprobs.topk(k, dim=-1))  # (B, C, k) each
        for row, length in enumerate(lengths):
            for t in range(begin, min(end, length)):
                candidates = list(zip(top_ids[row][t - begin], top_values[row][t - begin]))
                if t + 1 < length:
                    token_logprobs[row].append(chosen[row][t - begin])
                    top[row].append(candidates)
                else:  # after the last token: what would come next
                    next_top[row] = candidates
    return [ScoredSequence(batch[r], token_logprobs[r], top[r], next_top[r]) for r in range(len(batch))]
