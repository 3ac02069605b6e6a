"""Chat records for supervised fine-tuning: `messages` lists, their tokens, and which tokens are trained on.

A record is one JSON line holding a list of messages, as in OpenAI's chat fine-tuning files and Hugging
Face TRL's "conversational" datasets:

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}

Roles are system, user and assistant. The loss is on every assistant turn (its content and the marker
that ends the turn), never on system or user text: what TRL's `assistant_only_loss=True` and axolotl's
`roles_to_train: ["assistant"]` (with `train_on_eos: turn`) train on. Each assistant turn is a
demonstration of the answer the model should give in its context; training on the last one only would
throw the others away.

Rendering, two ways:
- **with a chat template** (`tokenizer.chat_template`, Hugging Face's Jinja format): the conversation as
  `tokenizer.apply_chat_template` writes it, tokenised without added special tokens (the template writes
  its own, e.g. Gemma's `<bos>`), as `apply_chat_template(tokenize=True)` does. Where assistant turn i
  lies is found prefix by prefix: the template applied to messages[:i] with `add_generation_prompt=True`
  ends where the turn's content begins, applied to messages[:i + 1] where the turn ends. Each prefix
  must tokenise to a prefix of the whole conversation's tokens; a template for which that fails (it
  writes a message differently once another follows, or a token merges across the boundary) is
  refused with the record's line, never guessed. Trained on: the tokens between the two, that is the
  content and the template's end-of-turn marker (Gemma: `<end_of_turn>`), less the whitespace the
  template writes after the marker (Gemma's "\\n": it separates turns; generation stops before it).
- **without one** (tiny-gpt2, and the builtin gemma-3-270m, whose GGUF file carries no template): lines
  `role: content`, the format `lmforge serve` renders chat in for such a model. Each message is
  tokenised on its own and the ids concatenated, after the tokenizer's leading special tokens (as a
  prompt is tokenised): `user: {content}\\n` (system likewise), then for an assistant turn `assistant:`
  (not trained on), ` {content}` and EOS (trained on: EOS ends the turn, as after a completion), then
  `\\n` (not trained on).

Truncation to `model.max_length` keeps the start of the conversation (TRL's `truncation_mode="keep_start"`):
later turns are cut, and a conversation with no assistant token left is dropped and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.files import read_rows
from lmforge.errors import UserError, cut, first_line, shown

ROLES = ("system", "user", "assistant")
Span = tuple[int, int]  # [start, end) token positions trained on


@dataclass(frozen=True)
class Chat:
    messages: tuple[tuple[str, str], ...]  # (role, content)
    where: str  # "file.jsonl:12", for messages

    def as_json(self) -> str:
        """The messages as one JSON text (manifest.json's fingerprint)."""
        return json.dumps([{"role": r, "content": c} for r, c in self.messages], ensure_ascii=False)


# ---- reading ------------------------------------------------------------------------------------


def file_chats(path: Path, column: str) -> tuple[list[Chat], dict[str, int]]:
    """The chats of a .jsonl file's `column` and the records skipped (reason -> count): a null or empty
    list, or an assistant message with empty content. A missing column or a malformed record is a
    UserError naming the file and line."""
    if path.suffix.lower() != ".jsonl":
        raise UserError(
            f"{path}: chat records (sft.messages_column={column}) are read from .jsonl files, one list of messages "
            "per line"
        )
    chats, skipped = [], {}
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        if column not in row:
            raise UserError(
                f"{where}: no column {shown(column)} (columns: {cut(', '.join(map(str, row)))}); "
                "name the column of messages with sft.messages_column"
            )
        value = row[column]
        if value is None or value == []:
            skipped["no messages"] = skipped.get("no messages", 0) + 1
            continue
        messages = parse_messages(value, column, where)
        if any(role == "assistant" and not content.strip() for role, content in messages):
            skipped["empty assistant message"] = skipped.get("empty assistant message", 0) + 1
            continue
        chats.append(Chat(messages, where))
    return chats, skipped


def parse_messages(value, column: str, where: str) -> tuple[tuple[str, str], ...]:
    """A record's messages as (role, content) pairs; anything else is a UserError naming `where`."""
    if not isinstance(value, list):
        raise UserError(
            f"{where}: column {shown(column)} holds a {type(value).__name__}, expected a list of "
            '{"role": ..., "content": ...} messages'
        )
    messages = []
    for k, message in enumerate(value):
        if not isinstance(message, dict):
            raise UserError(
                f"{where}: {column}[{k}] is a {type(message).__name__}, expected an object with 'role' and 'content'"
            )
        for key in ("role", "content"):
            if key not in message:
                raise UserError(f"{where}: {column}[{k}] has no {key!r} (keys: {cut(', '.join(map(str, message)))})")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise UserError(f"{where}: {column}[{k}] has role {shown(role)}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(
                f"{where}: {column}[{k}] ({role}) has content of type {type(content).__name__}, expected text"
            )
        messages.append((role, content))
    if not any(role == "assistant" for role, _ in messages):
        roles = ", ".join(role for role, _ in messages)
        raise UserError(f"{where}: no assistant message to train on (roles: {roles})")
    return tuple(messages)


# ---- tokens -------------------------------------------------------------------------------------


def encode_chat(tokenizer, chat: Chat, max_length: int) -> tuple[list[int], list[Span], bool] | None:
    """(ids, spans trained on, whether the conversation was cut) or None when no assistant token fits
    in `max_length`; rendered with the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        ids, spans = template_tokens(tokenizer, chat)
    else:
        ids, spans = plain_tokens(tokenizer, chat)
    # a conversation's first token has nothing before it to be predicted from: never a label
    spans = [(max(start, 1), end) for start, end in spans if end > max(start, 1)]
    if len(ids) <= max_length:
        return ids, spans, False
    spans = [(start, min(end, max_length)) for start, end in spans if start < max_length]
    return (ids[:max_length], spans, True) if spans else None


def plain_tokens(tokenizer, chat: Chat) -> tuple[list[int], list[Span]]:
    """The `role: content` lines of a tokenizer without a chat template (see the module docstring)."""

    def text(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    ids = list(tokenizer("")["input_ids"])  # the leading special tokens a prompt gets (Gemma's <bos>; GPT-2: none)
    spans = []
    for role, content in chat.messages:
        if role != "assistant":
            ids += text(f"{role}: {content}\n")
            continue
        ids += text("assistant:")
        start = len(ids)
        ids += text(" " + content) + [tokenizer.eos_token_id]
        spans.append((start, len(ids)))
        ids += text("\n")
    return ids, spans


def template_tokens(tokenizer, chat: Chat) -> tuple[list[int], list[Span]]:
    """The conversation through the tokenizer's chat template, and each assistant turn's tokens, found
    prefix by prefix (see the module docstring)."""
    messages = [{"role": role, "content": content} for role, content in chat.messages]

    def tokens(upto: int, generation_prompt: bool) -> list[int]:
        try:
            text = tokenizer.apply_chat_template(
                messages[:upto], tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as e:  # noqa: BLE001 - a template raises its own errors (roles must alternate, ...)
            raise UserError(
                f"{chat.where}: the chat template refused this conversation: {cut(first_line(e))}"
            ) from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    whole = tokens(len(messages), False)
    spans = []
    for i, (role, _) in enumerate(chat.messages):
        if role != "assistant":
            continue
        if i == 0:  # transformers renders no empty conversation, so the prompt before this turn cannot be found
            raise UserError(
                f"{chat.where}: the conversation starts with an assistant message, and a chat template cannot render "
                "what comes before it; start with a system or user message"
            )
        start = _prefix_length(tokens(i, True), whole, chat.where, f"messages[:{i}] with the generation prompt")
        end = _prefix_length(tokens(i + 1, False), whole, chat.where, f"messages[:{i + 1}]")
        while end > start + 1 and not tokenizer.decode([whole[end - 1]]).strip():
            end -= 1  # whitespace written after the end-of-turn marker, between turns
        if end > start:
            spans.append((start, end))
    return whole, spans


def _prefix_length(prefix: list[int], whole: list[int], where: str, what: str) -> int:
    if whole[: len(prefix)] != prefix:
        at = next((j for j, (a, b) in enumerate(zip(prefix, whole)) if a != b), min(len(prefix), len(whole)))
        raise UserError(
            f"{where}: the chat template is not prefix-stable: {what} does not tokenise to a prefix of the whole "
            f"conversation (they differ at token {at}), so the assistant turns cannot be located; use a template "
            "that writes each message the same way whatever follows (sft.chat_template)"
        )
    return len(prefix)
