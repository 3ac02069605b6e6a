"""What `lmforge serve` computes for a completion or chat request, apart from HTTP: the prompts prepared
and checked against the limits, the decoding jobs handed to the worker (generation/serve_worker.py), and
the choices of the answer (generation/serve_openai.py's shapes).

Log-probabilities (`logprobs`, `echo`) come from one forward pass of the scorer (generation/logprobs.py)
over the prompt's tokens, as given (token ids) or as the tokenizer splits the text (with its special
tokens, as for generating). A greedy one-token completion, which lm-evaluation-harness's loglikelihood
requests ask for (`echo`, `logprobs` 1, `max_tokens` 1, `temperature` 0), is that same pass: the next
token is the top-1 after the prompt, and it is reported even when it is the end-of-sequence token
(whose text is empty), so that the answer always holds one token after the prompt's, as the harness
expects. `max_tokens` 0 with `echo` scores the prompt alone. Any other completion with log-probabilities
is generated first, then the prompt and the completion's text, as the tokenizer splits it, are scored.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from lmforge.errors import UserError
from lmforge.generation.generate import HFGenerator
from lmforge.generation.sampling import Completion, cut_at_stop
from lmforge.generation.serve_limits import ServeLimits, check_work
from lmforge.generation.serve_openai import TokenTexts, answer, logprobs_object, usage
from lmforge.generation.serve_requests import ChatRequest, CompletionRequest, render_chat
from lmforge.generation.serve_worker import Job

Decode = Callable[[Job], Awaitable[list]]

_request_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # generator -> its copy
_copying = threading.Lock()


def request_tokenizer(generator: HFGenerator):
    """The copy of `generator`'s tokenizer that the HTTP side uses. A fast tokenizer keeps its padding
    settings in one Rust object, which the decoding thread sets for every batch it encodes; encoding a
    request with that same object meanwhile would change them under it. Copied once per model (about
    2 s for Gemma's 262,144 words)."""
    with _copying:
        tokenizer = _request_tokenizers.get(generator)
        if tokenizer is None:
            tokenizer = _request_tokenizers[generator] = copy.deepcopy(generator.tokenizer)
        return tokenizer


@dataclass(frozen=True)
class Prompt:
    text: str
    """what generation starts from"""
    ids: list[int]
    """what the scorer scores"""


def prepare(generator: HFGenerator, prompts: list[str | list[int]]) -> list[Prompt]:
    """Each prompt as text and as token ids (a prompt of token ids keeps them; its text is their decoding)."""
    tokenizer = request_tokenizer(generator)
    prepared = []
    for prompt in prompts:
        if isinstance(prompt, str):
            prepared.append(Prompt(prompt, tokenizer(prompt)["input_ids"]))
        else:
            prepared.append(Prompt(ids_to_text(tokenizer, prompt), list(prompt)))
    return prepared


def ids_to_text(tokenizer, ids: list[int]) -> str:
    """The text of token ids to generate from; a leading BOS the tokenizer would add again is left out."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    bos = tokenizer.bos_token
    if bos and ids[:1] == [tokenizer.bos_token_id] and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text.removeprefix(bos)
    return text


def check_prompts(generator: HFGenerator, prompts: list[Prompt], n: int, max_tokens: int, limits: ServeLimits) -> None:
    """Refuse an empty prompt, work past the budget, and a prompt that does not fit the model's positions."""
    for i, prompt in enumerate(prompts):
        if not prompt.ids:
            raise UserError(f"prompt {i} is empty (no tokens)")
    check_work([len(p.ids) for p in prompts], n, max_tokens, limits.max_request_tokens)
    for i, prompt in enumerate(prompts):
        if generator.max_positions and len(prompt.ids) + max_tokens > generator.max_positions:
            raise UserError(
                f"prompt {i} has {len(prompt.ids)} tokens; with max_tokens={max_tokens} it passes the model's "
                f"{generator.max_positions} positions"
            )


async def complete(generator: HFGenerator, name: str, req: CompletionRequest, limits: ServeLimits, decode: Decode):
    """The answer (a dict in OpenAI's completion shape) to a completion request."""
    prompts = await asyncio.to_thread(prepare, generator, req.prompts)
    params = req.params
    check_prompts(generator, prompts, params.n, req.max_tokens, limits)
    wants_logprobs = req.logprobs is not None or req.echo
    top_k = req.logprobs or 0
    one_pass = req.max_tokens == 0 or (wants_logprobs and params.temperature == 0 and req.max_tokens == 1)
    if one_pass:
        scored = await decode(Job(generator, "score", sequences=[p.ids for p in prompts], top_k=top_k))
        samples = [[one_pass_sample(generator, s, req)] * params.n for s in scored]
    else:
        texts = [p.text for p in prompts]
        completions = await decode(Job(generator, "generate", prompts=texts, params=params, seeded=req.seeded))
        samples = [[(c, None) for c in row] for row in completions]
        if wants_logprobs:
            samples = await score_completions(generator, prompts, samples, top_k, decode)
    choices = await asyncio.to_thread(completion_choices, generator, prompts, samples, req)
    completion_tokens = sum(c.tokens for row in samples for c, _ in row)
    return answer("cmpl", "text_completion", name, choices, usage(sum(len(p.ids) for p in prompts), completion_tokens))


def one_pass_sample(generator: HFGenerator, scored, req: CompletionRequest):
    """The greedy one-token completion after a scored prompt (none when max_tokens is 0), and its scores:
    (Completion, (token ids, token log-probabilities, top tokens) of prompt and completion)."""
    ids, logprobs, tops = list(scored.tokens), list(scored.token_logprobs), list(scored.top)
    if req.max_tokens == 0:
        return Completion("", 0, "length"), (ids, logprobs, tops)
    token, logprob = scored.next_top[0]
    ids.append(token)
    logprobs.append(logprob)
    tops.append(scored.next_top)
    if token in generator.eos_ids:  # counted and scored, but not part of the text
        return Completion("", 1, "stop"), (ids, logprobs, tops)
    text = request_tokenizer(generator).decode([token], skip_special_tokens=True)
    text, stopped = cut_at_stop(text, req.params.stop)
    return Completion(text, 1, "stop" if stopped else "length"), (ids, logprobs, tops)


async def score_completions(generator: HFGenerator, prompts: list[Prompt], samples, top_k: int, decode: Decode):
    """Each generated completion scored after its prompt (its text's tokens; cut to the model's positions)."""
    tokenizer = request_tokenizer(generator)
    sequences = []
    for prompt, row in zip(prompts, samples, strict=True):
        for completion, _ in row:
            sequence = prompt.ids + tokenizer(completion.text, add_special_tokens=False)["input_ids"]
            sequences.append(sequence[: generator.max_positions or None])
    scored = await decode(Job(generator, "score", sequences=sequences, top_k=top_k))
    scored_samples, k = [], 0
    for row in samples:
        scored_row = []
        for completion, _ in row:
            scores = scored[k]
            scored_row.append((completion, (scores.tokens, scores.token_logprobs, scores.top)))
            k += 1
        scored_samples.append(scored_row)
    return scored_samples


def completion_choices(generator: HFGenerator, prompts: list[Prompt], samples, req: CompletionRequest) -> list[dict]:
    text_of = TokenTexts(request_tokenizer(generator))
    choices = []
    for i, (prompt, row) in enumerate(zip(prompts, samples, strict=True)):
        for j, (completion, scores) in enumerate(row):
            choice = {
                "index": i * req.params.n + j,
                "text": (prompt.text if req.echo else "") + completion.text,
                "finish_reason": completion.finish_reason,
                "logprobs": None,
                "completion_tokens": completion.tokens,
            }
            if scores is not None and (req.logprobs is not None or req.echo):
                ids, logprobs, tops = scores
                start = 0 if req.echo else len(prompt.ids)
                first_offset = 0 if req.echo else len(prompt.text)
                choice["logprobs"] = logprobs_object(
                    text_of, ids[start:], logprobs[start:], tops[start:], req.logprobs or 0, first_offset
                )
            choices.append(choice)
    return choices


async def chat(generator: HFGenerator, name: str, req: ChatRequest, limits: ServeLimits, decode: Decode) -> dict:
    """The answer (a dict in OpenAI's chat.completion shape) to a chat request."""
    text, extra_stop = await asyncio.to_thread(render_chat, request_tokenizer(generator), req.messages)
    params = replace(req.params, stop=req.params.stop + extra_stop)
    prompts = await asyncio.to_thread(prepare, generator, [text])
    check_prompts(generator, prompts, params.n, params.max_new_tokens, limits)
    [row] = await decode(Job(generator, "generate", prompts=[text], params=params, seeded=req.seeded))
    choices = [
        {
            "index": j,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": None,
            "finish_reason": c.finish_reason,
            "completion_tokens": c.tokens,
        }
        for j, c in enumerate(row)
    ]
    prompt_tokens = len(prompts[0].ids)
    return answer("chatcmpl", "chat.completion", name, choices, usage(prompt_tokens, sum(c.tokens for c in row)))
