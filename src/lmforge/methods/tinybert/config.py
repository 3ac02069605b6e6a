"""Options of TinyBERT (Jiao et al., Findings of EMNLP 2020, "TinyBERT: Distilling BERT for Natural
Language Understanding").

Two stages, each its own run: `general` distils a base encoder (the builtin MiniLM by default) into
the student on unlabeled text with the intermediate losses only; `task` distils a finished lmforge
classifier run into the student, intermediate layers first, then the prediction layer, on
augmented task data. Defaults follow the paper where this CPU allows: augmentation p = 0.4 and
K = 15 (section 3.2), temperature 1, uniform layer map. Fewer augmented copies (4, the paper 20)
and epochs, so a run fits a CPU; the student (3 layers, 192 hidden, 12 heads) is sized to be at
least 4x faster than MiniLM here (benchmarks/tinybert).
"""

from dataclasses import dataclass

from lmforge.config import option


@dataclass
class StudentConfig:
    layers: int = option(3, "transformer layers (the uniform layer map needs the teacher's to be a multiple)", min=1)
    hidden: int = option(192, "hidden size", min=8)
    heads: int = option(12, "attention heads (the attention loss pairs them with the teacher's heads)", min=1)
    intermediate: int = option(768, "feed-forward size", min=8)


@dataclass
class TinybertConfig:
    stage: str = option("task", "general (unlabeled text, intermediate losses) or task", choices=["general", "task"])
    teacher: str = option(
        "", "task: a finished lmforge classifier run folder; general: a base encoder (builtin name or folder)"
    )
    student: StudentConfig = option(StudentConfig(), "the student's shape")
    init_from: str = option(
        "", "task: the general stage's run folder to start the student from (empty: a random student)"
    )
    layer_map: list[int] = option([], "teacher layer (1-based) for each student layer; empty = uniform")
    intermediate_share: float = option(
        0.8, "task: share of the steps for the intermediate losses, before the prediction layer", min=0.0, max=1.0
    )
    temperature: float = option(1.0, "softmax temperature of the prediction-layer loss", min=0.0, exclusive_min=True)
    augment: bool = option(True, "task: add augmented copies of the training data (Algorithm 1)")
    augment_copies: int = option(
        4, "augmented copies tried per training example; duplicates are dropped (paper: N = 20)", min=1
    )
    augment_prob: float = option(0.4, "probability of replacing each word (paper: 0.4)", min=0.0, max=1.0)
    augment_candidates: int = option(15, "candidates per word, K (paper: 15)", min=1)
    corpus: str = option("gutenberg", "general: unlabeled text, the builtin `gutenberg` or a .txt file")
    held_out: int = option(256, "general: passages kept out of training to measure the distillation loss", min=1)
