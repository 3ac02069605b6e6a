"""The answers of `lmforge serve` in OpenAI's shapes: completion and chat objects, the legacy `logprobs`
object of completions, and the server-sent events of `stream: true`.

Shapes from platform.openai.com/docs/api-reference (completions: `text_completion` with `choices[].text`,
`logprobs` {tokens, token_logprobs, top_logprobs, text_offset}; chat: `chat.completion`; streaming:
`data: <chunk JSON>` events, `chat.completion.chunk` with `delta`s, ending with `data: [DONE]`, and a
last chunk with empty `choices` and the `usage` when `stream_options.include_usage` is true). Each choice
also carries `completion_tokens`, its own token count (an extension lmforge's `openai` backend reads).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence

from lmforge.generation.logprobs import TopTokens

LOWEST_LOGPROB = -9999.0  # what a log-probability of -inf is reported as (JSON has no infinity), as vLLM does


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def answer(prefix: str, kind: str, model: str, choices: list[dict], usage_: dict) -> dict:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage_,
    }


class TokenTexts:
    """Each token id's text, decoded once (special tokens kept: an EOS shows as itself)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.texts:
            self.texts[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self.texts[token]


def logprobs_object(
    text_of: TokenTexts,
    tokens: Sequence[int],
    token_logprobs: Sequence[float | None],
    tops: Sequence[TopTokens | None],
    top_k: int,
    first_offset: int,
) -> dict:
    """OpenAI's legacy logprobs object for `tokens`: each token's text and log-probability, its `top_k`
    alternatives (the token itself always among them, as vLLM answers, so the top-1 test of
    lm-evaluation-harness holds), and each token's character offset from `first_offset`."""
    texts = [text_of(t) for t in tokens]
    token_logprobs = [None if lp is None else max(lp, LOWEST_LOGPROB) for lp in token_logprobs]
    top_logprobs: list[dict | None] = []
    for token, logprob, top in zip(tokens, token_logprobs, tops, strict=True):
        if top is None:
            top_logprobs.append(None)
            continue
        entries: dict[str, float] = {}
        for candidate, value in top[:top_k]:  # highest first: a text two tokens share keeps the higher value
            entries.setdefault(text_of(candidate), max(value, LOWEST_LOGPROB))
        entries.setdefault(text_of(token), logprob)
        top_logprobs.append(entries)
    offsets, offset = [], first_offset
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


# ---- server-sent events -----------------------------------------------------------------------------------


def event(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def completion_events(whole: dict, include_usage: bool) -> Iterator[str]:
    """The events of a finished completion answer: each choice's text, then its finish reason, then the
    usage (when asked), then [DONE]."""
    head = {key: whole[key] for key in ("id", "object", "created", "model")}
    for choice in whole["choices"]:
        text = {**choice, "finish_reason": None}
        yield event({**head, "choices": [text], **({"usage": None} if include_usage else {})})
        end = {"index": choice["index"], "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]}
        end["completion_tokens"] = choice["completion_tokens"]
        yield event({**head, "choices": [end], **({"usage": None} if include_usage else {})})
    if include_usage:
        yield event({**head, "choices": [], "usage": whole["usage"]})
    yield event("[DONE]")
