"""Options of continual pretraining of a causal LM (Wu et al. 2024, "Continual Learning for Large Language
Models: A Survey", section 3). The shared `train.*` keys drive each task's supervised fine-tuning (the `sft`
method, full fine-tuning); `data.max_train_examples` caps each task's training pairs.
"""

from dataclasses import dataclass

from lmforge.config import option


@dataclass
class ContinualLmConfig:
    """Continual pretraining / instruction tuning of a causal LM (the survey's section 3): one domain after
    another, each by the `sft` method from the model the previous one finished with (full fine-tuning)."""

    tasks: list[str] = option(
        ["gsm8k", "mbpp"],
        "the stream, in order: generation tasks (their training split) or .jsonl/.csv/.tsv files of (prompt, "
        "completion) pairs",
    )
    strategy: str = option(
        "sequential",
        "sequential (one domain after another) or replay (each later task's training data mixed with a "
        "reservoir sample of earlier tasks' pairs)",
        choices=["sequential", "replay"],
    )
    replay_size: int = option(100, "replay: earlier tasks' pairs mixed into each later task's training data", min=1)
    held_out: int = option(50, "pairs held out of each task's training data: the loss measured after each task",
                           min=1)  # fmt: skip
    prompt_column: str = option("prompt", "column holding the prompt in a .jsonl/.csv/.tsv file")
    completion_column: str = option("completion", "column holding the completion in a .jsonl/.csv/.tsv file")
