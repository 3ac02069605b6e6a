"""K-BERT fine-tuning on sentence trees (Liu et al., AAAI 2020, "K-BERT: Enabling Language Representation
with Knowledge Graph").

K-BERT fine-tunes every weight of a BERT-family classifier, unchanged, on inputs built by its knowledge,
embedding and seeing layers (tree.py): the tokens of the sentence tree, their soft positions and the
visible matrix as an additive attention mask. The paper needs no new weights: a graph that matches
nothing gives exactly the plain model's inputs.

The recipe reads top to bottom: load the graph, load the data, load the model, build the sentence trees
(once, up front, for the training and evaluation texts), start training, the loop, finish. Its own pieces
are plain functions below: a micro-batch's loss and an evaluation collate sentence trees instead of token
ids (`tree_loss`, `predict_logits`); the metrics are data/classify.py's: accuracy, macro-F1, loss and the
confusion matrix. Every refusal of the options (a missing or malformed graph file, a multiple-choice text
without its choices) comes before the model is loaded.

`final/` is the fine-tuned classifier (save_pretrained), its tokenizer and `kbert.json` (the graph and
the options the inputs were built with). `lmforge eval` and `predict` feed plain token ids, so they
refuse a K-BERT run (registry.py: its kind is `tree_classifier`); `predict_logits` here scores texts
with the run's own inputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, describe_parameters, seed_everything
from lmforge.core.metrics import classification_metrics
from lmforge.core.training_run import RunResult, scalar_metrics, start_training
from lmforge.data.classify import load_classification, loss_sum, refuse_text_pairs, summary
from lmforge.data.files import task_manifest
from lmforge.errors import UserError
from lmforge.methods.kbert.choices import SCORE_LABEL, choice_texts
from lmforge.methods.kbert.graph import load_graph
from lmforge.methods.kbert.tree import SentenceTree, SentenceTreeBuilder, collate
from lmforge.models.classifier import load_classifier, load_saved_classifier

OPTIONS_FILE = "kbert.json"
# Model types whose forward takes position_ids, token_type_ids and a 4-D additive attention mask; RoBERTa-style
# models number positions from padding_idx + 1, so their soft positions are shifted by it.
POSITION_OFFSET = {"bert": None, "electra": None, "roberta": "pad", "xlm-roberta": "pad", "camembert": "pad"}


@dataclass(frozen=True)
class TreeInputs:
    """How sentence trees become model inputs: the options of `tree.collate` for one model."""

    pad_id: int
    visible_matrix: bool
    soft_positions: bool
    position_offset: int
    dtype: torch.dtype

    def collate(self, trees: list[SentenceTree], device) -> dict[str, torch.Tensor]:
        return collate(
            trees,
            self.pad_id,
            visible_matrix=self.visible_matrix,
            soft_positions=self.soft_positions,
            dtype=self.dtype,
            device=device,
            position_offset=self.position_offset,
        )


@dataclass
class TreeExamples:
    """Training and evaluation examples as sentence trees, with label indices into the task's labels.

    An example is `n_choices` consecutive trees: multiple choice (choices.py) gives each question-choice
    tree one output and reads an example's logits as those outputs, (n_choices,); otherwise one tree
    with one output per label."""

    train_trees: list[SentenceTree]
    train_labels: list[int]
    eval_trees: list[SentenceTree]
    eval_labels: list[int]
    n_choices: int

    def train_example(self, j: int) -> list[SentenceTree]:
        c = self.n_choices
        return self.train_trees[j * c : (j + 1) * c]

    @property
    def lengths(self) -> list[int]:
        """The training examples' token counts (an example's trees together): they order the batches."""
        return [sum(len(tree.input_ids) for tree in self.train_example(j)) for j in range(len(self.train_labels))]


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    kb, train = cfg.options, cfg.train
    graph = load_graph(kb.graph)  # a missing or malformed graph is refused first, in one line
    refuse_text_pairs(cfg.data, "kbert", "its sentence tree grows from one text; train pairs with finetune or lora")
    task = load_classification(cfg.data)
    train_texts, eval_texts, n_choices = task.train.texts, task.eval.texts, 1
    if kb.choices:  # a question's C choices are C texts; a question without them is refused here
        train_texts = choice_texts(train_texts, task.labels, task.train.source)
        eval_texts = choice_texts(eval_texts, task.labels, task.eval.source)
        n_choices = len(task.labels)

    seed_everything(train.seed)
    # every weight trains, as in the paper: nothing to adapt. Multiple choice: one output, the score of a
    # question-choice tree (choices.py)
    outputs = [SCORE_LABEL] if kb.choices else task.labels
    model, tokenizer = load_classifier(cfg.model.name, outputs, train.seed, cfg.model.dropout)
    say(describe_parameters(cfg.model.name, model))
    inputs = tree_inputs(model, tokenizer, kb)

    builder = SentenceTreeBuilder(tokenizer, graph, kb.max_entities, cfg.model.max_length, kb.lemmas)
    index = {label: i for i, label in enumerate(task.labels)}
    data = TreeExamples(
        builder.trees(train_texts),
        [index[x] for x in task.train.labels],
        builder.trees(eval_texts),
        [index[x] for x in task.eval.labels],
        n_choices,
    )
    say(f"knowledge graph {graph.name}: {len(graph.triples):,} triples")
    say(f"train: {tree_summary(data.train_trees)}")
    say(f"eval: {tree_summary(data.eval_trees)}")

    t = start_training(
        cfg, run_dir, resume, model, tokenizer, data.lengths, task_manifest(task), select_metric=train.metric
    )
    device, n_labels = t.accelerator.device, len(task.labels)

    def evaluate() -> dict:
        logits = predict_logits(t.model, data.eval_trees, inputs, train.eval_batch_size * n_choices, device)
        return scores(logits.reshape(len(data.eval_labels), -1), data.eval_labels, n_labels)

    t.evaluator = evaluate
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate(batch, partial(tree_loss, t.model, data, inputs, step_size=batch.size, device=device))
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)

    options = {
        "graph": kb.graph,
        "graph_name": graph.name,
        "triples": len(graph.triples),
        "max_entities": kb.max_entities,
        "lemmas": kb.lemmas,
        "visible_matrix": kb.visible_matrix,
        "soft_positions": kb.soft_positions,
        "choices": kb.choices,
        "max_length": cfg.model.max_length,
        "position_offset": inputs.position_offset,
        "train_trees": tree_counts(data.train_trees),
        "eval_trees": tree_counts(data.eval_trees),
    }

    def save(model, tokenizer, folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / OPTIONS_FILE).write_text(json.dumps(options, indent=1) + "\n")

    final = t.finish(save, partial(summary, task))
    return RunResult(run_dir, scalar_metrics(final), ("accuracy", final["accuracy"]))


def tree_loss(
    model, data: TreeExamples, inputs: TreeInputs, micro: list[int], step_size: int, device
) -> dict[str, torch.Tensor]:
    """{"loss": the micro-batch's summed cross-entropy / the examples of the whole step}, its examples
    collated from their sentence trees; summed over the step's micro-batches it is the step's mean."""
    trees = [tree for j in micro for tree in data.train_example(j)]
    logits = model(**inputs.collate(trees, device)).logits.view(len(micro), -1)  # (B, labels)
    labels = torch.tensor([data.train_labels[j] for j in micro], device=device)
    return {"loss": loss_sum(logits, labels) / step_size}


def tree_inputs(model, tokenizer, kb) -> TreeInputs:
    """The collate options for `model`; a model whose forward cannot take K-BERT's inputs is refused."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in POSITION_OFFSET:
        raise UserError(
            f"kbert: model type {model_type!r} is not supported (it needs position_ids and a 4-D attention mask: "
            f"{', '.join(POSITION_OFFSET)})"
        )
    offset = model.config.pad_token_id + 1 if POSITION_OFFSET[model_type] == "pad" else 0
    dtype = next(model.parameters()).dtype
    return TreeInputs(tokenizer.pad_token_id or 0, kb.visible_matrix, kb.soft_positions, offset, dtype)


@torch.no_grad()
def predict_logits(model, trees: list[SentenceTree], inputs: TreeInputs, batch_size: int, device) -> np.ndarray:
    """Logits (N, C) in the input order; batches are formed by tree length to waste little padding."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(trees)), key=lambda i: len(trees[i].input_ids))
    out: list[torch.Tensor | None] = [None] * len(trees)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = model(**inputs.collate([trees[i] for i in chunk], device)).logits.float().cpu()
        for i, row in zip(chunk, logits, strict=True):
            out[i] = row
    model.train(was_training)
    return torch.stack(out).numpy()


def scores(logits: np.ndarray, label_ids: list[int], n_labels: int) -> dict:
    """accuracy, macro_f1, mean loss and the confusion matrix, as data/classify.py's `evaluate` gives them."""
    labels = np.asarray(label_ids)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {"loss": loss, **classification_metrics(labels, logits.argmax(-1), n_labels)}


def tree_counts(trees: list[SentenceTree]) -> dict:
    """How much knowledge the trees carry: sentences with a branch, branches, tokens, branches dropped."""
    return {
        "sentences": len(trees),
        "with_knowledge": sum(any(b for b in tree.branch_ids) for tree in trees),
        "branches": sum(max(tree.branch_ids, default=0) for tree in trees),
        "mean_tokens": round(sum(len(tree.input_ids) for tree in trees) / max(len(trees), 1), 2),
        "dropped_branches": sum(tree.dropped_branches for tree in trees),
    }


def tree_summary(trees: list[SentenceTree]) -> str:
    c = tree_counts(trees)
    return (
        f"{c['with_knowledge']:,} of {c['sentences']:,} sentences get knowledge, {c['branches']:,} branches, "
        f"{c['mean_tokens']} tokens on average, {c['dropped_branches']:,} branches dropped to fit max_length"
    )


def load_trained(run_dir: Path, cfg: RunConfig):
    """(model, tokenizer) of a finished run: the classifier itself, which expects sentence-tree inputs
    (`kbert.json` in final/ holds how they are built)."""
    return load_saved_classifier(run_dir / "final")


def load_tree_options(run_dir: Path) -> dict:
    """The graph and options a finished run's inputs were built with (final/kbert.json)."""
    path = Path(run_dir) / "final" / OPTIONS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no final/{OPTIONS_FILE}; not a finished K-BERT run")
    return json.loads(path.read_text())
