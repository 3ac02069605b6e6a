"""SFT's section of report.html: what the model was trained on, token by token.

`sft_data.json` (written when the run starts) holds the pair counts, token statistics and the
first training pairs split into tokens, each marked as prompt (not trained on) or supervised; the
report shows them so that the masking can be checked by eye: grey prompt tokens, green completion
tokens, and the EOS that ends every completion (chats: grey system and user turns and template
markup, green assistant turns). With packing it also holds the number of packed rows.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from lmforge.data.pairs import Encoded, Pairs

DATA_FILE = "sft_data.json"
SHOWN = 2  # training pairs shown token by token
KEYS = ["source", "pairs", "skipped", "prompt_tokens_mean", "completion_tokens_mean", "supervised_tokens", "longest"]


def data_summary(tokenizer, train: Pairs, train_data: Encoded, dev: Pairs, dev_data: Encoded) -> dict:
    def split(pairs: Pairs, data: Encoded) -> dict:
        targets = [data.targets(i) for i in range(len(data))]
        prompts = [len(ids) - n for ids, n in zip(data.ids, targets)]  # every token not trained on
        return {
            "source": pairs.source,
            "pairs": len(pairs),
            "skipped": pairs.skipped,
            "prompt_tokens_mean": round(sum(prompts) / len(prompts), 1),
            "completion_tokens_mean": round(sum(targets) / len(targets), 1),
            "supervised_tokens": sum(targets),
            "longest": max(len(x) for x in data.ids),
        }

    examples = []
    for i in range(min(SHOWN, len(train_data))):
        trained = [label != -100 for label in train_data.labels(i)]
        tokens = [[tokenizer.decode([token]), supervised] for token, supervised in zip(train_data.ids[i], trained)]
        examples.append({"where": train.pairs[i].where, "tokens": tokens})
    return {"train": split(train, train_data), "eval": split(dev, dev_data), "examples": examples}


def _cell(value) -> str:
    if isinstance(value, dict):  # skipped pairs: reason -> count
        return ", ".join(f"{n:,} {why}" for why, n in value.items()) or "none"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report_sections(run_dir: Path) -> list[tuple[str, str]]:
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        return []
    summary = json.loads(path.read_text())
    head = "".join(f"<th>{escape(k)}</th>" for k in ["", *KEYS])
    rows = "".join(
        f"<tr><th>{split}</th>" + "".join(f"<td>{escape(_cell(summary[split].get(k)))}</td>" for k in KEYS) + "</tr>"
        for split in ("train", "eval")
    )
    parts = [
        f"<table><tr>{head}</tr>{rows}</table>",
        "<p>Tokens of the first training pairs: <span style='color:#888'>prompt (not trained on)</span>, "
        "<span style='background:#d4f4d4'>completion and EOS (the loss)</span>.</p>",
    ]
    for example in summary["examples"]:
        spans = "".join(
            f"<span style='background:#d4f4d4'>{escape(text)}</span>"
            if supervised
            else f"<span style='color:#888'>{escape(text)}</span>"
            for text, supervised in example["tokens"]
        )
        parts.append(f"<h3>{escape(example['where'])}</h3><pre style='white-space:pre-wrap'>{spans}</pre>")
    return [("Training data", "".join(parts))]
