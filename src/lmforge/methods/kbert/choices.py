"""K-BERT for multiple-choice questions (`kbert.choices=true`), e.g. OpenBookQA.

A question with C choices is C sentence trees, one per "question choice" text, each with its own
knowledge; the classifier has a single output, read as the score of that choice, and the C scores of
a question are its class logits, so the cross-entropy and the metrics are those of a C-way classifier
(labels = the choices' letters). This is how BERT-family encoders are fine-tuned on multiple-choice
tasks (Devlin et al., NAACL 2019, SWAG, section 4.4): a single sequence holding a question and all its
choices leaves a small encoder at chance (OpenBookQA, benchmarks/kbert/RESULTS.md).

An example's text is "question (A) first choice (B) second choice ...", the form of the builtin `obqa`
dataset; its letters must be the task's labels, in order. `recipe.predict_logits` on the trees of
`choice_texts` gives one score per tree, (N * C, 1); `.reshape(-1, C)` gives the class logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.core.classify import loss_sum
from lmforge.core.loop import OptimizerBatch
from lmforge.errors import UserError
from lmforge.methods.kbert.recipe import KbertRun, predict_logits, scores

SCORE_LABEL = "choice score"  # the one output of the classifier


def split_choices(text: str, letters: list[str], where: str) -> list[str]:
    """["question choice A", "question choice B", ...] of a text "question (A) choice (B) choice ...".

    Markers are found from the right, so a choice whose own text holds a marker stays whole (OpenBookQA's
    train question 12-1145 has a choice "ducks sitting on their eggs (D) baby birds chewing worms").
    """
    end, choices = len(text), []
    for letter in reversed(letters):
        marker = f"({letter}) "
        at = text.rfind(marker, 0, end)
        if at < 0:
            raise UserError(f"{where}: kbert.choices expects 'question (A) ... (B) ...'; no {marker.strip()!r} found")
        choices.append(text[at + len(marker) : end].strip())
        end = at
    question = text[:end].strip()
    if not question or not all(choices):
        raise UserError(f"{where}: kbert.choices needs a question and non-empty choices: {text[:80]!r}")
    return [f"{question} {choice}" for choice in reversed(choices)]


def choice_texts(texts: list[str], letters: list[str], source: str) -> list[str]:
    """Every example's C question-choice texts, example by example (C = len(letters))."""
    return [t for i, text in enumerate(texts) for t in split_choices(text, letters, f"{source}, example {i + 1}")]


@dataclass(kw_only=True)
class KbertChoiceRun(KbertRun):
    """A KbertRun whose `train_trees` / `eval_trees` hold `n_choices` trees per example, in order; the
    model gives each tree one logit, and an example's logits (n_choices,) are its class scores."""

    n_choices: int

    def accumulate_gradients(self, batch: OptimizerBatch) -> float:
        device, c = self.accelerator.device, self.n_choices

        def micro_loss(micro: list[int]) -> dict:
            trees = [tree for j in micro for tree in self.train_trees[j * c : (j + 1) * c]]
            logits = self.model(**self.inputs.collate(trees, device)).logits.view(len(micro), c)  # (B*C, 1) -> (B, C)
            labels = torch.tensor([self.train_labels[j] for j in micro], device=device)
            return {"loss": loss_sum(logits, labels) / batch.size}

        return self.accumulate(batch, micro_loss)

    def evaluate(self) -> dict:
        c = self.n_choices
        batch = self.cfg.train.eval_batch_size * c
        logits = predict_logits(self.model, self.eval_trees, self.inputs, batch, self.accelerator.device)
        return scores(logits.reshape(-1, c), self.eval_labels, c)  # (N*C, 1) -> (N, C)
