"""K-BERT for multiple-choice questions (`kbert.choices=true`), e.g. OpenBookQA.

A question with C choices is C sentence trees, one per "question choice" text, each with its own
knowledge; the classifier has a single output, read as the score of that choice, and the C scores of
a question are its class logits, so the cross-entropy and the metrics are those of a C-way classifier
(labels = the choices' letters). This is how BERT-family encoders are fine-tuned on multiple-choice
tasks (Devlin et al., NAACL 2019, SWAG, section 4.4); `recipe.TreeExamples` reads an example as
its `n_choices` consecutive trees. A single sequence holding a question and all its
choices leaves a small encoder at chance (OpenBookQA, benchmarks/kbert/RESULTS.md).

An example's text is "question (A) first choice (B) second choice ...", the form of the builtin `obqa`
dataset; its letters must be the task's labels, in order. `recipe.predict_logits` on the trees of
`choice_texts` gives one score per tree, (N * C, 1); `.reshape(-1, C)` gives the class logits.
"""

from __future__ import annotations

from lmforge.errors import UserError

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
