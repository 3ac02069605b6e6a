"""K-BERT fine-tuning: setup -> train -> evaluate -> save, on sentence trees instead of plain token ids.

K-BERT (Liu et al., AAAI 2020, "K-BERT: Enabling Language Representation with Knowledge Graph") fine-tunes
every weight of a BERT-family classifier, unchanged, on inputs built by its knowledge, embedding and
seeing layers (tree.py): the tokens of the sentence tree, their soft positions and the visible matrix as
an additive attention mask. The paper needs no new weights: a graph that matches nothing gives exactly
the plain model's inputs.

The loop is the shared classifier loop (`ClassifierRun`, core/classifier_run.py) with two methods
replaced by `KbertRun`: a micro-batch and an evaluation batch are collated from sentence trees, which
are built once, up front, for the training and evaluation texts. Everything else (data order by tree
length, accumulation, schedule, early stopping, checkpoints, final.json, report) is the shared code, and
the metrics are data/classify.py's: accuracy, macro-F1, loss and the confusion matrix.

`final/` is the fine-tuned classifier (save_pretrained), its tokenizer and `kbert.json` (the graph and
the options the inputs were built with). `lmforge eval` and `predict` feed plain token ids, so they
refuse a K-BERT run (registry.py, `Method.plain_inputs`); `predict_logits` here scores texts with the
run's own inputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import RunConfig
from lmforge.core.classifier_run import ClassifierRun, start_classifier_run
from lmforge.core.console import say
from lmforge.core.loop import OptimizerBatch, StopSignal
from lmforge.core.metrics import classification_metrics
from lmforge.data.classify import loss_sum
from lmforge.data.files import Task
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


@dataclass(kw_only=True)
class KbertRun(ClassifierRun):
    """A ClassifierRun whose examples are sentence trees (`train_ids` / `eval_ids` hold their flattened ids).

    Multiple choice (choices.py): an example is `n_choices` consecutive trees, each with one output, and
    its logits are those outputs, (n_choices,); otherwise one tree with one output per label."""

    train_trees: list[SentenceTree]
    eval_trees: list[SentenceTree]
    inputs: TreeInputs
    n_choices: int = 1

    def accumulate_gradients(self, batch: OptimizerBatch) -> float:
        """Forward and backward over the step's micro-batches (mean cross-entropy over the step); the loss."""
        device, c = self.accelerator.device, self.n_choices

        def micro_loss(micro: list[int]) -> dict[str, torch.Tensor]:
            trees = [tree for j in micro for tree in self.train_trees[j * c : (j + 1) * c]]
            logits = self.model(**self.inputs.collate(trees, device)).logits.view(len(micro), -1)  # (B, labels)
            labels = torch.tensor([self.train_labels[j] for j in micro], device=device)
            return {"loss": loss_sum(logits, labels) / batch.size}

        return self.accumulate(batch, micro_loss)

    def evaluate(self) -> dict:
        batch_size = self.cfg.train.eval_batch_size * self.n_choices
        logits = predict_logits(self.model, self.eval_trees, self.inputs, batch_size, self.accelerator.device)
        return scores(logits.reshape(len(self.eval_labels), -1), self.eval_labels, len(self.task.labels))


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> dict:
    kb = cfg.options
    graph = load_graph(kb.graph)  # a bad graph is refused here, before anything is written

    def encode_trees(model, tokenizer, task: Task):
        """Sentence trees for every text, built once; their flattened ids order the batches by length
        (multiple choice: an example's C trees, and their ids joined)."""
        inputs = tree_inputs(model, tokenizer, kb)
        builder = SentenceTreeBuilder(tokenizer, graph, kb.max_entities, cfg.model.max_length, kb.lemmas)
        train_texts, eval_texts, c = task.train.texts, task.eval.texts, 1
        if kb.choices:
            train_texts = choice_texts(train_texts, task.labels, task.train.source)
            eval_texts = choice_texts(eval_texts, task.labels, task.eval.source)
            c = len(task.labels)
        train_trees, eval_trees = builder.trees(train_texts), builder.trees(eval_texts)
        say(f"knowledge graph {graph.name}: {len(graph.triples):,} triples")
        say(f"train: {tree_summary(train_trees)}")
        say(f"eval: {tree_summary(eval_trees)}")
        extra = {"train_trees": train_trees, "eval_trees": eval_trees, "inputs": inputs, "n_choices": c}

        def ids(trees: list[SentenceTree]) -> list[list[int]]:
            return [sum((tree.input_ids for tree in trees[i : i + c]), []) for i in range(0, len(trees), c)]

        return ids(train_trees), ids(eval_trees), extra

    build_model = None
    if kb.choices:  # one output: the score of a question-choice tree (choices.py)

        def build_model(labels: list[str], seed: int):
            return load_classifier(cfg.model.name, [SCORE_LABEL], seed, cfg.model.dropout)

    # every weight trains, as in the paper: nothing to adapt
    t = start_classifier_run(
        cfg, run_dir, resume, lambda model: None, build_model=build_model, encode_examples=encode_trees,
        run_class=KbertRun,
    )  # fmt: skip
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate_gradients(batch)
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
        "position_offset": t.inputs.position_offset,
        "train_trees": tree_counts(t.train_trees),
        "eval_trees": tree_counts(t.eval_trees),
    }

    def save(model, tokenizer, folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / OPTIONS_FILE).write_text(json.dumps(options, indent=1) + "\n")

    return t.finish(save)


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


def load_trained(run_dir: Path, cfg: RunConfig, labels: list[str]):
    """(model, tokenizer) of a finished run: the classifier itself, which expects sentence-tree inputs
    (`kbert.json` in final/ holds how they are built)."""
    return load_saved_classifier(run_dir / "final")


def load_tree_options(run_dir: Path) -> dict:
    """The graph and options a finished run's inputs were built with (final/kbert.json)."""
    path = Path(run_dir) / "final" / OPTIONS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no final/{OPTIONS_FILE}; not a finished K-BERT run")
    return json.loads(path.read_text())
