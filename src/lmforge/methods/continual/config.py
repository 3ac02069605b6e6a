"""Options of continual learning over a stream of classification tasks (Wu et al. 2024, "Continual Learning
for Large Language Models: A Survey"; the strategies' own papers are cited beside each option).

The stream is `continual.tasks`, trained in that order, each task a child run that starts from the model
the previous one finished with; the shared `train.*` keys drive each task's training, `data.max_train_examples`
and `data.max_eval_examples` cap each task's splits. `data.train` and `data.eval` are not used.
"""

from dataclasses import dataclass

from lmforge.config import option

STRATEGIES = ("sequential", "replay", "ewc", "lwf", "adapters", "olora", "joint")


@dataclass
class ContinualConfig:
    tasks: list[str] = option(
        ["sst2", "trec6", "agnews"],
        "the stream, in order: builtin datasets (their train and dev splits) or TRAIN_FILE|EVAL_FILE pairs of "
        ".jsonl/.csv/.tsv files (data.text_column, data.label_column)",
    )
    setting: str = option(
        "task",
        "task (the task id is known: only its classes compete), class (every class seen so far competes) or "
        "domain (the tasks share one label set); van de Ven et al. 2022",
        choices=["task", "class", "domain"],
    )
    strategy: str = option(
        "sequential",
        "sequential (fine-tune task after task: the lower bound), replay (experience replay), ewc, lwf, "
        "adapters (a LoRA per task, chosen by task id), olora (orthogonal LoRA subspaces) or joint (all tasks "
        "at once: the upper bound)",
        choices=list(STRATEGIES),
    )
    replay_size: int = option(1000, "replay: examples kept in the reservoir buffer over the whole stream", min=1)
    replay_batch_size: int = option(
        0, "replay: buffer examples added to each micro-batch (0 = train.batch_size; Chaudhry et al. 2019)", min=0
    )
    ewc_lambda: float = option(
        1000.0, "ewc: the penalty's weight lambda (Kirkpatrick et al. 2017, eq. 3); choose it on validation data",
        min=0.0,
    )  # fmt: skip
    fisher_examples: int = option(
        500, "ewc: training examples of each finished task that estimate its diagonal Fisher", min=1
    )
    lwf_temperature: float = option(2.0, "lwf: distillation temperature T (Li and Hoiem 2017: 2)", min=0.0,
                                    exclusive_min=True)  # fmt: skip
    lwf_weight: float = option(1.0, "lwf: weight lambda_o of the old tasks' distillation loss (Li and Hoiem: 1)",
                               min=0.0)  # fmt: skip
    lora_r: int = option(8, "adapters, olora: rank of each task's LoRA", min=1, max=1024)
    lora_alpha: float = option(16.0, "adapters, olora: LoRA scaling alpha (the scale is alpha / r)", min=0.0,
                               exclusive_min=True)  # fmt: skip
    target_modules: list[str] = option(["query", "value"], "adapters, olora: the linear layers that get LoRA")
    olora_lambda1: float = option(
        0.5, "olora: weight of the orthogonality loss between this task's and earlier tasks' LoRA subspaces "
        "(Wang et al. 2023: 0.5)", min=0.0,
    )  # fmt: skip
    olora_lambda2: float = option(0.0, "olora: weight of the L2 penalty on this task's LoRA weights", min=0.0)
