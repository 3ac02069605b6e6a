"""Options of AdaLoRA (Zhang et al., ICLR 2023, "Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning"). Names follow peft's `AdaLoraConfig`; the total step count comes from `train.*`.

Defaults: ranks and betas as in the paper's GLUE setup (Appendix E: b(0) = 1.5 x b(T), beta1 =
beta2 = 0.85); the adapted matrices are the paper's (W_q, W_k, W_v, W_o, W_f1, W_f2); the
orthogonal-regulariser weight is the official code's 0.1 (peft's default is 0.5). tinit / tfinal /
deltaT are in optimizer steps, sized for the ~650-step CPU recipes (the paper's GLUE runs use
thousands of steps: scale them with the run).
"""

from dataclasses import dataclass

from lmforge.config import option

ORTH_REG_FORMS = ["squared", "official"]  # the paper's eq. 4; the official code's and peft's
PAPER_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


@dataclass
class AdaloraConfig:
    init_r: int = option(
        12, "initial rank of every adapted matrix: b(0) = init_r x matrices (paper: 1.5 x target)", min=1
    )
    target_r: int = option(8, "average final rank: the budget b(T) = target_r x matrices", min=0)
    tinit: int = option(50, "steps of warm-up before the budget starts to fall (paper: t_i)", min=0)
    tfinal: int = option(100, "final steps with the rank pattern fixed (paper: t_f)", min=0)
    deltaT: int = option(10, "re-allocate the budget every deltaT steps (paper: Delta_T)", min=1)
    beta1: float = option(0.85, "EMA coefficient of the sensitivity (paper eq. 8)", min=0.0, max=1.0)
    beta2: float = option(0.85, "EMA coefficient of the uncertainty (paper eq. 9)", min=0.0, max=1.0)
    orth_reg_weight: float = option(0.1, "gamma of the orthogonal regulariser (official code 0.1; peft 0.5)", min=0.0)
    orth_reg_form: str = option(
        "squared",
        "squared: the paper's eq. 4 (squared Frobenius norms); official: the unsquared norms of the official "
        "code and peft (a different strength for the same gamma, see docs/adalora.md)",
        choices=ORTH_REG_FORMS,
    )
    target_modules: list[str] = option(PAPER_TARGETS, "linear layers to adapt, matched by name suffix")
    lora_alpha: float = option(
        32.0, "scale numerator: the update is multiplied by lora_alpha / init_r", min=0.0, exclusive_min=True
    )
    lora_dropout: float = option(0.1, "dropout on the adapter's input", min=0.0, max=0.9)
    trainable_modules: list[str] = option(["classifier"], "modules trained in full and saved with the adapter")
