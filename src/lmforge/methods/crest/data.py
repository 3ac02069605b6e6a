"""The labeled set L, the unlabeled set U and the held-out set of a CReST run, and each generation's
labeled set (L plus the pseudo-labeled samples chosen after the previous generation).

U comes from `crest.unlabeled` (a file of texts), or, with `crest.long_tail.gamma` > 0, L and U are drawn
together from `data.train` as a long tail (longtail.py), U's labels hidden: they are never trained on,
and serve only to report how precise the pseudo-labels were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.data.classify import load_classification, refuse_text_pairs
from lmforge.data.files import Examples, Task, manifest_entry, read_texts, task_manifest
from lmforge.errors import UserError
from lmforge.methods.crest.longtail import long_tail_split


@dataclass
class CrestData:
    task: Task
    """train: the labeled set L; eval: the held-out set; labels: the label set (model order)"""
    unlabeled: list[str]
    """U's texts"""
    hidden_labels: list[str] | None
    """U's true labels where U was drawn from labeled data (the report's pseudo-label precision); else None"""
    source: str
    """where U came from"""
    split: dict | None = None
    """the long-tail draw (settings, class order, counts), for manifest.json"""

    @property
    def labeled_counts(self) -> list[int]:
        """N_c per label, in the model's label order."""
        return [self.task.train.labels.count(label) for label in self.task.labels]

    def manifest(self) -> dict:
        from lmforge.core.rundir import fingerprint

        unlabeled = {"source": self.source, "examples": len(self.unlabeled),
                     "sha256_16": fingerprint(self.unlabeled, [])}  # fmt: skip
        return {**task_manifest(self.task), "unlabeled": unlabeled, "long_tail": self.split}


def load_crest_data(cfg: RunConfig) -> CrestData:
    """L, U and the held-out set; bad input is a UserError naming the option or the file."""
    c = cfg.options
    if c.long_tail.gamma and c.unlabeled:
        raise UserError("crest.unlabeled and crest.long_tail.gamma: give one (an unlabeled file, or a long tail "
                        "drawn from data.train), not both")  # fmt: skip
    if not c.long_tail.gamma and not c.unlabeled:
        raise UserError("crest.unlabeled: no unlabeled data; name a file of texts, or set crest.long_tail.gamma "
                        "to draw a long-tailed labeled and unlabeled set from data.train")  # fmt: skip
    refuse_text_pairs(cfg.data, "crest", "its weak and strong views augment one text")
    task = load_classification(cfg.data)
    if not c.long_tail.gamma:
        texts = read_texts(Path(c.unlabeled).expanduser(), cfg.data.text_column)
        if not texts:
            raise UserError(f"crest.unlabeled: {c.unlabeled}: no texts")
        say(f"{c.unlabeled}: {len(texts):,} unlabeled texts")
        return CrestData(task, texts, None, c.unlabeled)

    lt = c.long_tail
    draw = long_tail_split(task.train.labels, lt.gamma, lt.labeled_fraction, lt.seed, lt.max_per_class or None)
    pool = task.train
    labeled = Examples([pool.texts[i] for i in draw.labeled], [pool.labels[i] for i in draw.labeled],
                       f"{pool.source} (long tail: labeled)")  # fmt: skip
    source = f"{pool.source} (long tail: unlabeled)"
    per_class = ", ".join(f"{k} {v}" for k, v in draw.labeled_counts.items())
    say(f"long tail gamma {lt.gamma:g} from {pool.source}: {len(draw.labeled):,} labeled ({per_class}), "
        f"{len(draw.unlabeled):,} unlabeled")  # fmt: skip
    return CrestData(
        Task(labeled, task.eval, task.labels),
        [pool.texts[i] for i in draw.unlabeled],
        [pool.labels[i] for i in draw.unlabeled],
        source,
        {**draw.manifest(), "pool": manifest_entry(pool)},
    )


def generation_labeled_set(data: CrestData, chosen: list[tuple[int, int]]) -> Examples:
    """L plus the chosen pseudo-labeled samples (unlabeled index, predicted label index): the next
    generation's labeled set. The samples stay in U as well (section 3.1)."""
    base = data.task.train
    if not chosen:
        return base
    texts = base.texts + [data.unlabeled[i] for i, _ in chosen]
    labels = base.labels + [data.task.labels[c] for _, c in chosen]
    return Examples(texts, labels, f"{base.source} + {len(chosen):,} pseudo-labeled")
