"""One CReST generation (FixMatch on the kernel) on tiny-bert, in process: the unlabeled stream, exact
gradient accumulation, the unlabeled loss's weight, the data options' refusals."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from lmforge.cli.recipes import find_recipe
from lmforge.errors import UserError
from lmforge.methods.crest.data import CrestData, generation_labeled_set, load_crest_data
from lmforge.methods.crest.generation import train_generation, unlabeled_indices
from lmforge.registry import load_run_config

TINY = [
    "model.name=tiny-bert",
    "model.dropout=0.0",  # no dropout: the same data gives the same gradient whatever the batching
    "model.max_length=32",
    "train.max_steps=2",
    "train.batch_size=8",
    "train.eval_every=2",
    "train.warmup_ratio=0",
    "data.max_eval_examples=16",
    "crest.threshold=0.0",  # every pseudo-label counts: the unlabeled loss is never masked to zero
    "crest.unlabeled_ratio=2",
    "crest.generations=2",
]


def config(*overrides):
    return load_run_config(find_recipe("crest/minilm_trec6"), [*TINY, *overrides])


def test_the_unlabeled_stream_is_a_function_of_the_step_and_covers_u_each_pass():
    n, per_step = 10, 4
    first_pass = np.concatenate([unlabeled_indices(n, per_step, s, seed=3) for s in range(5)])  # 20 = 2 passes
    assert sorted(first_pass[:10].tolist()) == list(range(10))  # one pass: every example once
    assert sorted(first_pass[10:].tolist()) == list(range(10))
    assert first_pass[:10].tolist() != first_pass[10:].tolist()  # a new order each pass
    assert unlabeled_indices(n, per_step, 3, seed=3).tolist() == first_pass[12:16].tolist()  # resumable
    assert unlabeled_indices(n, per_step, 3, seed=4).tolist() != first_pass[12:16].tolist()
    assert unlabeled_indices(3, 7, 0, seed=0).size == 7  # U smaller than a step: wraps around


def trained_weights(cfg, tmp_path, name):
    data = load_crest_data(cfg)
    final = train_generation(cfg, tmp_path / name, False, data, data.task.train, 0)
    return load_file(tmp_path / name / "final" / "model.safetensors"), final


def test_accumulation_gives_the_step_of_a_bigger_batch(tmp_path):
    """batch 8 x 1 micro-batch and batch 4 x 2 micro-batches: the same labeled and unlabeled examples
    and views in each step, so the same weights after it (labeled and unlabeled losses both normalised
    by the whole step)."""
    whole, _ = trained_weights(config(), tmp_path, "whole")
    split, _ = trained_weights(config("train.batch_size=4", "train.grad_accum=2"), tmp_path, "split")
    assert whole.keys() == split.keys()
    for key in whole:
        assert np.allclose(whole[key].numpy(), split[key].numpy(), atol=2e-5), key


def test_the_unlabeled_loss_moves_the_weights_and_is_logged(tmp_path):
    with_u, _ = trained_weights(config(), tmp_path, "fixmatch")
    without_u, _ = trained_weights(config("crest.unlabeled_weight=0"), tmp_path, "supervised")
    assert any(not np.allclose(with_u[k].numpy(), without_u[k].numpy()) for k in with_u)
    logged = [json.loads(line) for line in (tmp_path / "fixmatch" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train"]
    assert train and all(r["loss_unlabeled"] > 0 and r["mask_rate"] == 1.0 for r in train)  # threshold 0
    supervised = [json.loads(line) for line in (tmp_path / "supervised" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_unlabeled" not in r for r in supervised)


def test_a_generation_labeled_set_is_l_plus_the_chosen_samples():
    cfg = config()
    data = load_crest_data(cfg)
    chosen = [(0, 1), (5, 0)]
    labeled = generation_labeled_set(data, chosen)
    n = len(data.task.train)
    assert labeled.texts[:n] == data.task.train.texts and labeled.labels[:n] == data.task.train.labels
    assert labeled.texts[n:] == [data.unlabeled[0], data.unlabeled[5]]
    assert labeled.labels[n:] == [data.task.labels[1], data.task.labels[0]]
    assert len(data.unlabeled) == len(load_crest_data(cfg).unlabeled)  # U keeps them


def test_the_long_tail_is_drawn_from_data_train_and_recorded(tmp_path):
    data = load_crest_data(config())
    counts = dict(zip(data.task.labels, data.labeled_counts))
    order = data.split["class_order"]
    assert counts[order[0]] / counts[order[-1]] == pytest.approx(10, rel=0.15)  # gamma 10, rounding
    assert data.hidden_labels is not None and len(data.hidden_labels) == len(data.unlabeled)
    assert not set(data.unlabeled) & set(data.task.train.texts) or len(set(data.task.train.texts)) < len(
        data.task.train.texts
    )  # disjoint draws (TREC repeats a few questions verbatim)
    manifest = data.manifest()
    assert manifest["long_tail"]["gamma"] == 10 and manifest["unlabeled"]["examples"] == len(data.unlabeled)


def test_unlabeled_data_from_a_file(tmp_path):
    texts = tmp_path / "u.txt"
    texts.write_text("what is the capital of peru ?\nwho wrote hamlet ?\n\n")
    data = load_crest_data(config("crest.long_tail.gamma=0", f"crest.unlabeled={texts}"))
    assert isinstance(data, CrestData) and data.unlabeled == ["what is the capital of peru ?", "who wrote hamlet ?"]
    assert data.hidden_labels is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["crest.unlabeled=u.txt"], "give one"),
        (["crest.long_tail.gamma=0"], "no unlabeled data"),
        (["crest.long_tail.gamma=0", "crest.unlabeled={tmp}/empty.txt"], "no texts"),
        (["crest.long_tail.gamma=0", "crest.unlabeled={tmp}/missing.txt"], "not found"),
        (["crest.long_tail.gamma=5000"], "lower gamma"),
    ],
)
def test_bad_data_options_are_refused_in_one_line(tmp_path, overrides, message):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match=message):
        load_crest_data(config(*[o.format(tmp=tmp_path) for o in overrides]))


def test_a_config_typo_or_a_bad_value_names_the_key():
    with pytest.raises(UserError, match="crest.alignment_momentum"):
        config("crest.alignment_momentum=1.0")
    with pytest.raises(UserError, match="crest.generation"):
        config("crest.generation=3")
