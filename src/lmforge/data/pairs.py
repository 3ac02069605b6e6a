"""(prompt, completion) pairs, or chats, for supervised fine-tuning, their tokens and their labels.

Pairs come from a task's training split or from the user's file:
- `gsm8k:train` (6,965 problems) or `mbpp:train` (374): each problem's `prompt`, zero-shot by
  default (`sft.shots` adds the task's worked exemplars), and its `reference` as the completion
  (GSM8K: " " + the worked solution ending in "#### N"; MBPP: the reference code and "\n[DONE]",
  as the task's exemplars end). The model is trained in the format it is later evaluated in
  (`lmforge eval-gen` with the same shots).
- a .jsonl / .csv / .tsv file with a `prompt` and a `completion` column (`sft.prompt_column`,
  `sft.completion_column`). Values are used as written, not stripped: a completion's leading space
  is part of its first token. Rows with an empty prompt or completion are skipped and counted; a
  missing column, a value that is not text, bad JSON or a row of the wrong width stops with the
  file and line.
- chats: a .jsonl file whose `sft.messages_column` holds a list of {role, content} messages
  (`data/chat.py`: the reading, the rendering and the assistant spans trained on). A `Pairs` then holds
  `Chat` records instead of `Pair`s; everything below (held-out carve, tokens, labels) works on either.

Held-out pairs (the evaluation loss): `data.eval` names a task split or a file; when it is empty,
`sft.dev_size` pairs are carved out of the training pairs by a seeded shuffle (seed 2024, whatever
`train.seed`, so runs with different seeds are evaluated on the same pairs) before
`data.max_train_examples` takes the first N of the rest.

Tokens: the prompt is tokenised exactly as generation tokenises it (with the tokenizer's own
special tokens: Gemma's <bos>), the completion on its own (no special tokens) followed by EOS, and
the two are concatenated: the boundary is exactly where generation would start. Labels are the
input ids with -100 on the prompt tokens and on padding, so only the completion and its EOS are
supervised (EOS teaches the model to stop). Truncation to `model.max_length`: the completion and
its EOS are never cut; the prompt loses tokens from its left (its leading special tokens stay);
a pair whose completion does not fit even beside a single prompt token is dropped. Both counts are
logged and recorded in manifest.json. `Encoded.spans` says which tokens are trained on when that is
not "everything after the prompt" (chats: the assistant turns).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from lmforge.core.console import say
from lmforge.data.chat import Chat, Span, encode_chat, file_chats
from lmforge.data.files import SUFFIXES, Examples, read_rows
from lmforge.errors import UserError
from lmforge.tasks import TASKS, load_task

if TYPE_CHECKING:
    from lmforge.config import DataConfig

DEV_SEED = 2024  # which pairs are held out does not depend on the run's seed


class PairOptions(Protocol):
    """The options `load_train_dev` reads (SFT's config section has them); a Protocol so that data/ does
    not import a method's config."""

    shots: int
    prompt_column: str
    completion_column: str
    messages_column: str
    dev_size: int


@dataclass(frozen=True)
class Pair:
    prompt: str
    completion: str
    where: str  # "gsm8k/123" or "file.jsonl:12", for messages


@dataclass
class Pairs:
    pairs: list[Pair] | list[Chat]  # one kind per source
    source: str
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.pairs)

    def head(self, n: int) -> Pairs:
        """The first n pairs (all when n is 0)."""
        return self if n <= 0 or n >= len(self) else Pairs(self.pairs[:n], self.source, self.skipped)

    def examples(self) -> Examples:
        """The pairs as Examples (prompt as the text, completion as the label; a chat's messages as JSON
        text, no label) for manifest.json's count, skipped rows and fingerprint."""
        texts = [p.as_json() if isinstance(p, Chat) else p.prompt for p in self.pairs]
        labels = ["" if isinstance(p, Chat) else p.completion for p in self.pairs]
        return Examples(texts, labels, self.source, self.skipped)

    @property
    def chats(self) -> bool:
        return bool(self.pairs) and isinstance(self.pairs[0], Chat)

    def describe(self) -> str:
        line = f"{self.source}: {len(self):,} {'conversations' if self.chats else 'pairs'}"
        if self.skipped:
            line += " (" + ", ".join(f"{n:,} skipped: {why}" for why, n in self.skipped.items()) + ")"
        return line


# ---- reading ------------------------------------------------------------------------------------


def load_train_dev(data: DataConfig, sft: PairOptions) -> tuple[Pairs, Pairs]:
    """The training pairs and the held-out pairs of a run's `data` section (see the module docstring)."""
    columns = (sft.prompt_column, sft.completion_column)
    pairs = load_pairs(data.train, sft.shots, *columns, messages_column=sft.messages_column)
    if data.eval:
        dev = load_pairs(data.eval, sft.shots, *columns, train=False, messages_column=sft.messages_column)
        train = pairs
        if dev.source == train.source:
            raise UserError(
                f"data.eval: {data.eval!r} is the training data; leave data.eval empty to hold out sft.dev_size pairs"
            )
    else:
        train, dev = carve_dev(pairs, sft.dev_size)
    return train.head(data.max_train_examples), dev.head(data.max_eval_examples)


def load_pairs(
    spec: str, shots: int, prompt_column: str, completion_column: str, train: bool = True, messages_column: str = ""
) -> Pairs:
    """Pairs of a task split (`gsm8k:train`; for training, the task's training split when only the task
    is named) or of a .jsonl / .csv / .tsv file; with `messages_column`, the chats of a .jsonl file. For
    training, a task's evaluation splits are refused."""
    name, _, split = spec.partition(":")
    if name in TASKS and messages_column:
        raise UserError(
            f"data {spec!r}: sft.messages_column={messages_column} reads chats from a .jsonl file, not tasks"
        )
    if name in TASKS:
        task = load_task(name)
        if task.train_split is None:
            raise UserError(f"data {spec!r}: task {name!r} has no training split (it is for evaluation only)")
        split = split or (task.train_split if train else "")
        if not split:
            raise UserError(f"data.eval: {spec!r} names no split (splits: {', '.join(task.splits)})")
        if train and split != task.train_split:
            raise UserError(f"data.train: {spec!r} is an evaluation split; train on {name}:{task.train_split}")
        return task_pairs(name, split, shots)
    path = Path(spec).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        if not path.exists():
            raise UserError(
                f"data {spec!r}: not a task ({', '.join(n for n, t in TASKS.items() if t.train_split)}) and not a file"
            )
        raise UserError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl, .csv or .tsv)")
    if shots:
        raise UserError(
            f"sft.shots={shots}: exemplars come with task data (gsm8k, mbpp); a file's prompts are used as is"
        )
    if messages_column:
        chats, skipped = file_chats(path, messages_column)
        if not chats:
            reasons = ", ".join(f"{n} with {why}" for why, n in skipped.items())
            raise UserError(f"{path}: no usable conversations ({reasons})")
        return Pairs(chats, str(path), skipped)
    return file_pairs(path, prompt_column, completion_column)


def task_pairs(name: str, split: str, shots: int) -> Pairs:
    task = load_task(name)
    # the completion ends as the task's exemplars do (MBPP: "[DONE]"), so zero- and few-shot training agree
    pairs = [Pair(p.prompt, p.reference + task.answer_end, p.id) for p in task.problems(split, shots=shots)]
    return Pairs(pairs, f"{name}:{split}" + (f" ({shots}-shot)" if shots else ""))


def file_pairs(path: Path, prompt_column: str, completion_column: str) -> Pairs:
    pairs, skipped = [], {}
    for line, row in read_rows(path):
        prompt = _text(path, line, row, prompt_column)
        completion = _text(path, line, row, completion_column)
        for value, why in ((prompt, "empty prompt"), (completion, "empty completion")):
            if value is None:
                skipped[why] = skipped.get(why, 0) + 1
                break
        else:
            pairs.append(Pair(prompt, completion, f"{path}:{line}"))
    if not pairs:
        reasons = ", ".join(f"{n} with an {why}" for why, n in skipped.items())
        raise UserError(f"{path}: no usable pairs ({reasons or 'no data rows'})")
    return Pairs(pairs, str(path), skipped)


def _text(path: Path, line: int, row: dict, column: str) -> str | None:
    """A row's value as text, or None when it is empty (skipped); a missing column or a value that
    is not text is a UserError."""
    if column not in row:
        chat_hint = "; chat records: sft.messages_column=messages" if "messages" in row else ""
        raise UserError(
            f"{path}:{line}: no column {column!r} (columns: {', '.join(map(str, row))}); "
            f"name the columns with sft.prompt_column and sft.completion_column{chat_hint}"
        )
    value = row[column]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{path}:{line}: column {column!r} holds a {type(value).__name__}, expected text")
    value = str(value)
    return value if value.strip() else None


def carve_dev(pairs: Pairs, dev_size: int) -> tuple[Pairs, Pairs]:
    """(train, dev): `dev_size` pairs held out by a seeded shuffle (DEV_SEED), both kept in order."""
    if dev_size >= len(pairs):
        raise UserError(f"sft.dev_size={dev_size} leaves no training pairs: {pairs.describe()}")
    order = list(range(len(pairs)))
    random.Random(DEV_SEED).shuffle(order)
    held = set(order[:dev_size])
    train = [p for i, p in enumerate(pairs.pairs) if i not in held]
    dev = [p for i, p in enumerate(pairs.pairs) if i in held]
    return Pairs(train, pairs.source, pairs.skipped), Pairs(dev, f"{pairs.source} (held out: {dev_size})")


# ---- tokens -------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Token ids of pairs: `ids[i]` is prompt + completion + EOS; its first `prompt_lengths[i]`
    tokens are the prompt's, not trained on. Chats set `spans`: the [start, end) ranges of each
    conversation's tokens trained on (its assistant turns); `prompt_lengths` is then where the first begins."""

    ids: list[list[int]]
    prompt_lengths: list[int]
    spans: list[list[Span]] | None = None  # None: each example trains on everything after its prompt

    def __len__(self) -> int:
        return len(self.ids)

    def supervised(self, i: int) -> list[Span]:
        """The token ranges of example i that the loss reads."""
        return self.spans[i] if self.spans is not None else [(self.prompt_lengths[i], len(self.ids[i]))]

    def targets(self, i: int) -> int:
        """Supervised tokens of example i: its completion and EOS (a chat: its assistant turns)."""
        return sum(end - start for start, end in self.supervised(i))

    def labels(self, i: int) -> list[int]:
        """Example i's ids with -100 on every token the loss does not read."""
        labels = [-100] * len(self.ids[i])
        for start, end in self.supervised(i):
            labels[start:end] = self.ids[i][start:end]
        return labels


def encode_pair(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], int, bool] | None:
    """(ids, prompt length, whether the prompt was cut) or None when the completion cannot fit."""
    prompt_ids = tokenizer(prompt)["input_ids"]  # as generation tokenises it, special tokens included
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(completion_ids) <= max_length:
        return prompt_ids + completion_ids, len(prompt_ids), False
    lead = special_prefix(tokenizer)
    room = max_length - len(completion_ids) - lead  # prompt tokens that fit, besides its special ones
    if room < 1:
        return None
    prompt_ids = prompt_ids[:lead] + prompt_ids[len(prompt_ids) - room :]  # cut from the left
    return prompt_ids + completion_ids, len(prompt_ids), True


def special_prefix(tokenizer) -> int:
    """How many special tokens the tokenizer puts before a text (Gemma: 1, <bos>; GPT-2: 0)."""
    return len(tokenizer("")["input_ids"]) - len(tokenizer("", add_special_tokens=False)["input_ids"])


def encode_pairs(tokenizer, pairs: Pairs, max_length: int) -> tuple[Pairs, Encoded]:
    """Tokenise pairs (or chats); returns those kept (too long ones dropped and counted) and their tokens."""
    kept, ids, prompt_lengths, spans, cut = [], [], [], [], 0
    for pair in pairs.pairs:
        if isinstance(pair, Chat):
            encoded = encode_chat(tokenizer, pair, max_length)
            start = encoded[1][0][0] if encoded else 0
        else:
            encoded = encode_pair(tokenizer, pair.prompt, pair.completion, max_length)
            start = encoded[1] if encoded else 0
        if encoded is None:
            continue
        kept.append(pair)
        ids.append(encoded[0])
        prompt_lengths.append(start)
        spans.append(encoded[1] if isinstance(pair, Chat) else None)
        cut += encoded[2]
    skipped = dict(pairs.skipped)
    dropped = len(pairs) - len(kept)
    too_long = "conversations with no assistant token within" if pairs.chats else "completions longer than"
    if dropped:
        skipped[f"{too_long} model.max_length"] = dropped
    if cut:
        what = "conversations cut at the end" if pairs.chats else "prompts cut from the left"
        say(f"{pairs.source}: {cut:,} {what} to fit model.max_length={max_length}")
    if not kept:
        what = "conversation has no assistant token within" if pairs.chats else "completion is longer than"
        raise UserError(f"{pairs.source}: every {what} model.max_length={max_length}")
    return Pairs(kept, pairs.source, skipped), Encoded(ids, prompt_lengths, spans if pairs.chats else None)


def collate(ids: list[list[int]], prompt_lengths: list[int], pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask (B, T), and labels (B, T): the input ids with -100
    on prompt tokens and padding (labels are not shifted: position t's logits predict labels[t + 1])."""
    labels = [[-100] * min(n, len(x)) + x[n:] for x, n in zip(ids, prompt_lengths)]
    return pad_batch(ids, labels, pad_id, device)


def collate_examples(data: Encoded, examples: list[int], pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """`collate` of the chosen examples of `data`, with their labels (`Encoded.labels`: chats' spans too)."""
    return pad_batch([data.ids[i] for i in examples], [data.labels(i) for i in examples], pad_id, device)


def pad_batch(ids: list[list[int]], labels: list[list[int]], pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (B, T); labels -100 on padding."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    label_ids = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention_mask[i, : len(x)] = 1
        label_ids[i, : len(y)] = torch.tensor(y, dtype=torch.long)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": label_ids.to(device),
    }
