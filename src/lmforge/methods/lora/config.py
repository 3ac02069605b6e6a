"""Options of LoRA (Hu et al. 2022). Defaults: r=8 on the attention query and value projections,
as in the paper's GLUE experiments (section 7.1, Table 2 adapts W_q and W_v); alpha=16 so the
update scale alpha/r is 2; dropout 0.1 as in the paper's RoBERTa hyper-parameters (Table 9)."""

from dataclasses import dataclass

from lmforge.config import option


@dataclass
class LoraConfig:
    r: int = option(8, "rank of each update B A (paper, Table 2: r=8 on W_q, W_v)", min=1)
    alpha: float = option(16.0, "scale numerator: the update is multiplied by alpha / r", min=0.0, exclusive_min=True)
    dropout: float = option(0.1, "dropout on the adapter's input (paper, Table 9)", min=0.0, max=0.9)
    target_modules: list[str] = option(["query", "value"], "linear layers to adapt, matched by name suffix")
    trainable_modules: list[str] = option(["classifier"], "modules trained in full and saved with the adapter")
