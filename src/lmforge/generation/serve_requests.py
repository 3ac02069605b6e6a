"""The requests of `lmforge serve`, read into plain values: the JSON body, OpenAI's completion and chat
fields (platform.openai.com/docs/api-reference/completions and .../chat), kept apart from the HTTP stack.
Every fault is a UserError (or a ClientError naming the field) whose message names the field; the server
answers it with 400.

Fields read: `prompt` (a string, a list of strings, a list of token ids or a list of lists of token ids)
or `messages`; `n`, `temperature` (default 1), `top_p` (default 1), `max_tokens` or its newer name
`max_completion_tokens` (which wins when both are given, as in vLLM), `stop`, `seed`, `stream` and
`stream_options.include_usage`; for completions `logprobs` (top log-probabilities per token) and `echo`
(the prompt's tokens in the answer, with `max_tokens` 0 to score the prompt alone). Fields that would
change the answer and are not implemented (`tools`, `functions`, `suffix`, penalties, `logit_bias`, a
`best_of` above `n`, chat `logprobs`, a `response_format` other than text) are refused, never ignored;
other fields (`user`, `model` is read by the server) are ignored.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass

from lmforge.errors import UserError
from lmforge.generation.sampling import SamplingParams
from lmforge.generation.serve_limits import ClientError

FALLBACK_CHAT_STOP = "\nuser:"


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str | list[int]]
    """each prompt as text, or as token ids (scored as they are; decoded to text to generate from)"""
    params: SamplingParams
    """the sampling parameters (max_new_tokens 1 when max_tokens is 0: nothing is generated then)"""
    max_tokens: int
    seeded: bool
    logprobs: int | None
    """top log-probabilities per token asked for (None: no log-probabilities)"""
    echo: bool
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatRequest:
    messages: list
    params: SamplingParams
    seeded: bool
    stream: bool
    include_usage: bool


def parse_json(data: bytes) -> dict:
    """The JSON object of a request body; anything else (invalid, too deeply nested, an integer of
    thousands of digits, not an object) is a 400."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"the body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise UserError("the body must be a JSON object")
    return body


def completion_request(body: dict, vocab_size: int, max_stop: int = 16, max_logprobs: int = 20) -> CompletionRequest:
    """A /v1/completions body read and checked (token ids against the model's `vocab_size`)."""
    refuse_unsupported(body)
    for key in ("suffix",):
        if body.get(key) not in (None, ""):
            raise ClientError(400, f"'{key}' is not supported by lmforge serve", param=key)
    prompts = read_prompts(body.get("prompt"), vocab_size)
    echo = _flag(body, "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _number(body, "logprobs", 0, int)
        if not 0 <= logprobs <= max_logprobs:
            raise ClientError(400, f"'logprobs' must be 0 to {max_logprobs}, got {logprobs}", param="logprobs")
    max_tokens = _max_tokens(body, 16)
    if max_tokens == 0 and not echo:
        message = "'max_tokens' 0 generates nothing: it needs 'echo' (to score the prompt)"
        raise ClientError(400, message, param="max_tokens")
    fields = {**body, "max_tokens": max(1, max_tokens), "max_completion_tokens": None}
    params = sampling_params(fields, 16, (), max_stop)
    best_of = body.get("best_of")
    if best_of is not None and _number(body, "best_of", 1, int) != params.n:
        raise ClientError(400, "'best_of' other than 'n' is not supported by lmforge serve", param="best_of")
    stream, include_usage = _stream(body)
    return CompletionRequest(prompts, params, max_tokens, _seeded(body), logprobs, echo, stream, include_usage)


def chat_request(body: dict, max_stop: int = 16) -> ChatRequest:
    """A /v1/chat/completions body read and checked (the messages are rendered later, by the model's tokenizer)."""
    refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError("'messages' must be a non-empty list of {role, content} objects")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise ClientError(
            400,
            "'logprobs' is not supported for chat by lmforge serve: use /v1/completions with 'logprobs'",
            param="logprobs",
        )
    response_format = body.get("response_format")
    text_format = isinstance(response_format, dict) and response_format.get("type") == "text"
    if response_format is not None and not text_format:
        message = "'response_format' other than text is not supported by lmforge serve"
        raise ClientError(400, message, param="response_format")
    params = sampling_params(body, 256, (), max_stop)
    stream, include_usage = _stream(body)
    return ChatRequest(messages, params, _seeded(body), stream, include_usage)


def refuse_unsupported(body: dict) -> None:
    """Refuse what the server would otherwise silently ignore while the client counts on it."""
    for key in ("tools", "functions"):
        if body.get(key) not in (None, []):
            message = f"'{key}' is not supported by lmforge serve: it generates plain text and calls no tools"
            raise ClientError(400, f"{message}; leave '{key}' out", param=key)
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none"):
            raise ClientError(400, f"'{key}' is not supported by lmforge serve (it calls no tools)", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise ClientError(400, f"'{key}' is not supported by lmforge serve (only 0)", param=key)
    if body.get("logit_bias") not in (None, {}):
        raise ClientError(400, "'logit_bias' is not supported by lmforge serve", param="logit_bias")


def read_prompts(prompt: object, vocab_size: int) -> list[str | list[int]]:
    """The prompts of a completion request: a string, a list of strings, a list of token ids, or a list
    of lists of token ids (OpenAI's four forms); token ids must lie in the vocabulary."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_token(t) for t in prompt):
            return [_tokens(prompt, vocab_size)]
        if all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
            return [_tokens(p, vocab_size) for p in prompt]
    raise UserError(
        "'prompt' must be a string, a non-empty list of strings, a list of token ids or a list of non-empty lists "
        "of token ids"
    )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens(ids: list[int], vocab_size: int) -> list[int]:
    for t in ids:
        if not 0 <= t < vocab_size:
            raise UserError(f"'prompt' holds token id {t}; this model's token ids are 0 to {vocab_size - 1}")
    return list(ids)


def sampling_params(
    body: dict, default_max_tokens: int, extra_stop: tuple[str, ...] = (), max_stop: int = 16
) -> SamplingParams:
    """SamplingParams from an OpenAI request body; a field of the wrong type or range is a UserError.
    Without a `seed` a fresh random one is drawn (see `_seeded`)."""
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise UserError("'stop' must be a string or a list of non-empty strings")
    if len(stop) > max_stop:  # each is searched for in the text after every token
        raise UserError(f"'stop' has {len(stop)} strings; this server takes at most {max_stop}")
    seed = body.get("seed")
    return SamplingParams(
        n=_number(body, "n", 1, int),
        temperature=_number(body, "temperature", 1.0, float),
        top_p=_number(body, "top_p", 1.0, float),
        max_new_tokens=_max_tokens(body, default_max_tokens),
        stop=tuple(stop) + extra_stop,
        seed=secrets.randbelow(2**31) if seed is None else _number(body, "seed", 0, int),
    )


def _max_tokens(body: dict, default: int) -> int:
    """`max_completion_tokens` (OpenAI's newer name) when given, else `max_tokens`, else `default`."""
    if body.get("max_completion_tokens") is not None:
        value = _number(body, "max_completion_tokens", default, int)
    else:
        value = _number(body, "max_tokens", default, int)
    if value < 0:
        raise UserError(f"'max_tokens' must be at least 0, got {value}")
    return value


def _seeded(body: dict) -> bool:
    return body.get("seed") is not None


def _stream(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) of a body."""
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise UserError("'stream_options' is only for 'stream': true")
    if not isinstance(options, dict):
        raise UserError("'stream_options' must be an object")
    return stream, _flag(options, "include_usage")


def _flag(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise UserError(f"'{key}' must be true or false, got {value!r}")
    return value


def _number(body: dict, key: str, default, kind: type):
    value = body.get(key)
    if value is None:
        return default
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (kind is int and not float(value).is_integer()):
        raise UserError(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def render_chat(tokenizer, messages: list) -> tuple[str, tuple[str, ...]]:
    """The prompt for chat `messages`, and stop strings the rendering needs."""
    clean = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UserError(f"messages[{k}] must be an object with a string 'role' and a 'content'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise UserError(f"messages[{k}].content must be a string or a list of text parts")
        clean.append({"role": m["role"], "content": content})
    if getattr(tokenizer, "chat_template", None):
        try:
            prompt = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. roles must alternate)
            raise UserError(f"the model's chat template refused these messages: {e}") from None
        # The template writes the BOS token itself; tokenizing the prompt would add a second one.
        bos = tokenizer.bos_token
        if bos and prompt.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
            prompt = prompt[len(bos) :]
        return prompt, ()
    lines = "".join(f"{m['role']}: {m['content']}\n" for m in clean)
    return lines + "assistant:", (FALLBACK_CHAT_STOP,)
