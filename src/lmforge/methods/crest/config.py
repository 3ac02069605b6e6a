"""Options of CReST and CReST+ (Wei et al., CVPR 2021, "CReST: A Class-Rebalancing Self-Training Framework
for Imbalanced Semi-Supervised Learning").

The shared `train.*` keys drive each generation's FixMatch training (the labeled batch is
`train.batch_size`; `train.max_steps` or `train.epochs` over the labeled set set its length); `data.train`
is the labeled set and `data.eval` the held-out set every generation is measured on. The unlabeled set is
`crest.unlabeled` (a file of texts), or is drawn with the labeled set from `data.train` as a long tail
(`crest.long_tail.gamma` > 0: the benchmark's setting; the hidden labels are never trained on).

Defaults follow the paper and its official code (section 5.1 and google-research/crest): 6 generations,
alpha = 1/3, t_min = 0.5; FixMatch's threshold 0.95, mu = 7 and lambda_u = 1 (Sohn et al. 2020, section 4).
`crest.generations: 1` with `crest.alignment: false` is FixMatch alone; `crest.unlabeled_weight: 0`
trains on the labeled set only.
"""

from dataclasses import dataclass

from lmforge.config import option


@dataclass
class LongTailConfig:
    gamma: float = option(
        0.0,
        "draw the labeled and unlabeled sets from data.train as a long tail with this imbalance ratio "
        "N_max / N_min (the paper: 10, 50, 100 and more); 0 = off, the unlabeled set is crest.unlabeled",
        min=0.0,
    )
    labeled_fraction: float = option(
        0.1, "the share of each class's drawn examples that keep their label (the paper's beta: 10%)", min=0.0,
        max=1.0, exclusive_min=True,
    )  # fmt: skip
    max_per_class: int = option(
        0, "cap on the head class's examples, labeled and unlabeled together (0 = as many as the data allows)", min=0
    )
    seed: int = option(0, "seed of the draw (apart from train.seed, so that seeds of training share a split)",
                       min=0, max=2**32 - 1)  # fmt: skip


@dataclass
class CrestConfig:
    generations: int = option(6, "generations of self-training, each a fresh model (the paper's CReST+: 6)", min=1,
                              max=100)  # fmt: skip
    alpha: float = option(
        1 / 3,
        "the exponent of the selection rate mu_l = (N_{L+1-l} / N_1) ** alpha (section 3.2; the paper's 1/3 is "
        "the official code's and USB's `alpha=3`, which raise to 1/alpha)",
        min=0.0,
    )
    alignment: bool = option(
        True, "CReST+: progressive distribution alignment of the pseudo-labels (section 3.3); false = CReST"
    )
    t_min: float = option(
        0.5, "CReST+: the alignment temperature of the last generation (t_g falls linearly from 1)", min=0.0, max=1.0
    )
    alignment_momentum: float = option(
        0.999, "CReST+: momentum of the running average of the model's unlabeled predictions (USB's)", min=0.0,
        max=1.0, exclusive_max=True,
    )  # fmt: skip
    threshold: float = option(
        0.95, "FixMatch's confidence threshold tau for a pseudo-label (Sohn et al. 2020)", min=0.0, max=1.0
    )
    unlabeled_ratio: int = option(7, "FixMatch's mu: unlabeled examples per labeled example in a step", min=1,
                                  max=64)  # fmt: skip
    unlabeled_weight: float = option(
        1.0, "FixMatch's lambda_u, the unlabeled loss's weight (0 = supervised on the labeled set alone)", min=0.0
    )
    strong_p: float = option(
        0.1, "the strong view's edit rate: EDA's random deletion and swap at this p (Wei and Zou 2019: 0.1)",
        min=0.0, max=0.5,
    )  # fmt: skip
    unlabeled: str = option("", "a .jsonl/.csv/.tsv file (its data.text_column) or a .txt file of unlabeled texts")
    long_tail: LongTailConfig = option(LongTailConfig(), "a long-tailed labeled and unlabeled set from data.train")
