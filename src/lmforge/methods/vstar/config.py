"""Options of V-STaR (Hosseini et al., COLM 2024, "V-STaR: Training Verifiers for Self-Taught Reasoners").

The shared `train.*` keys drive every generator's supervised fine-tuning (the `sft` method, on the
base model each time); `vstar.verifier.*` drives the DPO verifier. Defaults follow the paper where a
CPU allows it (its section 4 and appendix): T = 3 iterations, k = 16 samples per training problem,
LoRA for generator and verifier, the verifier's likelihood as the test-time score. The recipes
scale k, T and the problem counts down for a 270M model on two cores and say so.
"""

from dataclasses import dataclass

from lmforge.config import option
from lmforge.methods.sft.config import BLOCK_LINEAR_LAYERS

SCORES = ("likelihood", "mean_likelihood", "implicit_reward")
ORM_LOSSES = ("classification_and_lm", "classification")


@dataclass
class VerifierConfig:
    beta: float = option(0.1, "DPO's beta: how far the verifier may move from G_SFT (DPO paper's default)", min=0.0,
                         exclusive_min=True)  # fmt: skip
    lr: float = option(5e-5, "peak learning rate of the verifier's DPO training", min=0.0, exclusive_min=True)
    epochs: float = option(1.0, "passes over the preference pairs", min=0.0, exclusive_min=True)
    batch_size: int = option(4, "preference pairs per micro-batch", min=1)
    grad_accum: int = option(2, "micro-batches per optimizer step", min=1)
    max_pairs_per_problem: int = option(
        0,
        "cap on the correct x incorrect pairs of one problem, above which a seeded uniform sample of that many is "
        "kept; 0 = every pair (the paper's Cartesian product)",
        min=0,
    )
    test_score: str = option(
        "likelihood",
        "the score that picks a candidate at test time: likelihood log V(y|x) (the paper's), mean_likelihood "
        "(per token) or implicit_reward (beta * log V/G_SFT)",
        choices=list(SCORES),
    )


@dataclass
class OrmConfig:
    enabled: bool = option(
        False, "also train the ORM baseline (a correct / incorrect classifier on D_VER) and score with it"
    )
    loss: str = option(
        "classification_and_lm",
        "the ORM's objective: classification_and_lm (binary cross-entropy plus the language-modelling loss on "
        "the same solutions: Cobbe et al. 2021, as V-STaR's ORM) or classification (the cross-entropy alone)",
        choices=list(ORM_LOSSES),
    )
    lr: float = option(
        1e-4, "peak learning rate of the ORM's training (LoRA and its new head)", min=0.0, exclusive_min=True
    )
    epochs: float = option(1.0, "passes over D_VER's solutions", min=0.0, exclusive_min=True)
    batch_size: int = option(4, "solutions per micro-batch", min=1)
    grad_accum: int = option(2, "micro-batches per optimizer step", min=1)


@dataclass
class VstarConfig:
    iterations: int = option(3, "T: generator rounds, each SFT from the base model on the whole buffer D_GEN", min=1)
    samples_per_problem: int = option(16, "k: completions sampled per training problem each round", min=1)
    query_problems: int = option(0, "training problems sampled each round: the first N (0 = all)", min=0)
    sample_last_generator: bool = option(
        True,
        "sample the training problems from G^T too (Algorithm 1: the verifier learns from them); false skips "
        "that round, as RFT (one round of samples, then one generator) needs",
    )
    temperature: float = option(0.7, "sampling temperature of training-time and test-time samples", min=0.0,
                                exclusive_min=True)  # fmt: skip
    top_p: float = option(1.0, "nucleus sampling (1 = off)", min=0.0, exclusive_min=True, max=1.0)
    max_new_tokens: int = option(0, "tokens per sample at most (0 = the task's default of lmforge eval-gen)", min=0)
    generation_batch_size: int = option(8, "hf backend: sequences generated together", min=1)
    backend: str = option(
        "hf",
        "generation: hf (here) or openai (a server that loads each generator: vLLM with runtime LoRA, lmforge serve)",
        choices=["hf", "openai"],
    )
    base_url: str = option("http://127.0.0.1:8000/v1", "openai backend: the server's API root")
    concurrency: int = option(8, "openai backend: requests in flight", min=1)
    sandbox_workers: int = option(2, "code tasks: programs run at a time", min=1)
    test_split: str = option("", "problems of the test stage (empty = the task's evaluation split)")
    test_problems: int = option(0, "test problems: the first N of test_split (0 = all)", min=0)
    test_samples: int = option(16, "N: candidates sampled per test problem from each generator", min=1)
    ks: list[int] = option([1, 2, 4, 8, 16], "the k of Best-of-k, majority vote and pass@k (each <= test_samples)")
    seed: int = option(0, "seed of every sample (sampling is reproducible whatever the batch)", min=0)
    lora: bool = option(True, "LoRA for generator and verifier (the paper's); false = full fine-tuning")
    lora_r: int = option(8, "rank of the LoRA updates (the sft method's default)", min=1)
    lora_alpha: float = option(16.0, "LoRA scale numerator (update x alpha / r)", min=0.0, exclusive_min=True)
    lora_dropout: float = option(0.1, "dropout on the adapters' input", min=0.0, max=0.9)
    target_modules: list[str] = option(BLOCK_LINEAR_LAYERS, "layers LoRA adapts (GPT-2: c_attn, c_proj, c_fc)")
    verifier: VerifierConfig = option(VerifierConfig(), "the DPO verifier")
    orm: OrmConfig = option(OrmConfig(), "the outcome-reward-model verifier, a baseline (Cobbe et al. 2021)")
