"""The requests of `lmforge serve`, read into plain values: the JSON body, OpenAI's sampling fields and
chat messages. Kept apart from the HTTP stack so that another stack (ASGI) reads requests the same way;
every fault is a UserError whose message names the field (the server answers it with 400).
"""

from __future__ import annotations

import json
import math
import secrets

from lmforge.errors import UserError
from lmforge.generation.sampling import SamplingParams

FALLBACK_CHAT_STOP = "\nuser:"


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


def sampling_params(
    body: dict, default_max_tokens: int, extra_stop: tuple[str, ...] = (), max_stop: int = 16
) -> SamplingParams:
    """SamplingParams from an OpenAI request body; a field of the wrong type or range is a UserError."""
    for unsupported in ("stream", "logprobs", "echo"):
        if body.get(unsupported) not in (None, False, 0):
            raise UserError(f"'{unsupported}' is not supported by lmforge serve")
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
        max_new_tokens=_number(body, "max_tokens", default_max_tokens, int),
        stop=tuple(stop) + extra_stop,
        seed=secrets.randbelow(2**31) if seed is None else _number(body, "seed", 0, int),
    )


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
