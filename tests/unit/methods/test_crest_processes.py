"""CReST's FixMatch loss split over two processes, in process: each process's part of a micro-batch's unlabeled
share, as `accelerate launch` gives it (methods/crest/generation.py `fixmatch_loss`), adds up to what one process
computes, and CReST+'s running class distribution stays the one a single process keeps on every process (each
predicts the weak views of the whole share), with no exchange between them."""

import numpy as np
import pytest
import torch

from lmforge.cli.recipes import find_recipe
from lmforge.data.classify import EncodedTask, encode
from lmforge.methods.crest.generation import FixMatchInputs, aligner, fixmatch_loss
from lmforge.methods.crest.rebalance import RunningDistribution, alignment_target
from lmforge.models.classifier import load_classifier
from lmforge.registry import load_run_config

TEXTS = ["what is the capital of peru", "who wrote hamlet", "how far is the moon", "when did rome fall",
         "what does nasa stand for", "where is timbuktu", "how many legs has a spider", "who painted guernica",
         "why is the sky blue", "what is a quark"]  # fmt: skip
LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


@pytest.fixture(scope="module")
def setting():
    cfg = load_run_config(
        find_recipe("crest/minilm_trec6"),
        ["model.name=tiny-bert", "model.max_length=32", "crest.threshold=0.0", "crest.alignment=true"],
    )
    torch.manual_seed(0)
    model, tokenizer = load_classifier("tiny-bert", LABELS, 0, 0.0)
    with torch.no_grad():  # a random head predicts about the same for every text: sharpen it, so texts differ
        model.classifier.weight.mul_(200.0)
    ids = encode(tokenizer, TEXTS, 32)
    enc = EncodedTask(ids[:4], [0, 1, 2, 3], ids[:2], [0, 1], len(LABELS))
    return cfg, model, tokenizer, enc, ids


def run(setting, rank: int, holders: int, micro: list[int], running: RunningDistribution) -> dict:
    cfg, model, tokenizer, enc, ids = setting
    target = alignment_target([40, 20, 10, 5, 3, 2], 0.5)
    x = FixMatchInputs(model, tokenizer, enc, ids, TEXTS, tokenizer.pad_token_id, "cpu", cfg,
                       aligner(target, running), 8, rank)  # fmt: skip
    share = np.array([9, 3, 0, 7, 5, 1, 8, 2])  # the micro-batch's unlabeled examples, over all processes
    stats = {"masked": 0.0}
    parts = fixmatch_loss(x, micro, iter([(share, holders)]), step_size=4, view_seed=11, stats=stats)
    return {**{k: v.item() for k, v in parts.items()}, "masked": stats["masked"]}


def test_two_processes_add_up_to_one_and_align_alike(setting):
    one, first, second = (RunningDistribution(len(LABELS), 0.9) for _ in range(3))
    for _ in range(2):  # the first call starts the running distribution, the second moves it
        single = run(setting, 0, 1, [0, 1, 2, 3], one)
        parts = [run(setting, 0, 2, [0, 2], first), run(setting, 1, 2, [1, 3], second)]
        assert torch.equal(first.value, one.value) and torch.equal(second.value, one.value)
        for name in ("labeled", "unlabeled", "masked"):
            assert parts[0][name] + parts[1][name] == pytest.approx(single[name], rel=1e-5), name
    assert single["masked"] == 8  # threshold 0: every unlabeled example counts


def test_a_process_without_labeled_examples_runs_a_stand_in_that_counts_nothing(setting):
    # A last micro-batch of one labeled example: one process holds it and the whole unlabeled share; the other
    # runs stand-ins (the kernel weighs its labeled one 0) and still moves its running distribution alike.
    one, first, second = (RunningDistribution(len(LABELS), 0.9) for _ in range(3))
    single = run(setting, 0, 1, [0], one)
    holder, stand_in = run(setting, 0, 1, [0], first), run(setting, 1, 1, [0], second)
    assert holder["unlabeled"] == pytest.approx(single["unlabeled"], rel=1e-6)
    assert stand_in["unlabeled"] == 0.0 and stand_in["masked"] == 0
    assert torch.equal(first.value, one.value) and torch.equal(second.value, one.value)
