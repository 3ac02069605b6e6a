"""Text pairs reach the tokenizer as a pair and the model with their token type ids (data/classify.py), single
texts encode as before, and the methods and commands that read one text refuse pairs naming themselves."""

import pytest
import torch

from lmforge.cli.main import main
from lmforge.config import DataConfig
from lmforge.data.classify import (
    classification_loss,
    encode,
    encode_examples,
    encode_task,
    evaluate,
    refuse_pair_run,
    train_inputs,
)
from lmforge.data.files import Examples, Task
from lmforge.errors import UserError
from lmforge.models.classifier import load_classifier

LABELS = ["entailment", "contradiction"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_classifier("tiny-bert", LABELS, 0, None)
    return model.eval(), tokenizer  # no dropout: one input, one output


def pair_task() -> Task:
    texts, pairs = ["the cat sat on the mat", "a film"], ["a cat is sitting", "the movie was long and dull"]
    examples = Examples(texts, LABELS, "pairs", text_pairs=pairs)
    return Task(examples, examples, LABELS)


def test_a_pair_is_one_sequence_with_the_separator_and_token_types(tiny):
    model, tokenizer = tiny
    data = encode_task(tokenizer, pair_task(), max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(data.train_ids[0])
    first_sep = tokens.index("[SEP]")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    assert tokenizer.decode(data.train_ids[0][1:first_sep]) == "the cat sat on the mat"
    assert data.train_type_ids[0] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)

    inputs = train_inputs(data, [0, 1], tokenizer.pad_token_id, "cpu")  # (B, T), padded with type 0
    assert inputs["token_type_ids"].shape == inputs["input_ids"].shape
    assert inputs["token_type_ids"][0].tolist() == data.train_type_ids[0] + [0] * (
        inputs["input_ids"].shape[1] - len(tokens)
    )
    with torch.no_grad():  # the loss is computed on exactly these inputs, type ids included
        expected = torch.nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([0, 1]), reduction="sum")
        assert torch.allclose(
            classification_loss(model, data, [0, 1], 2, tokenizer.pad_token_id, "cpu")["loss"] * 2, expected
        )
        untyped = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        assert not torch.allclose(model(**untyped).logits, model(**inputs).logits)  # the types change the output

    pad = tokenizer.pad_token_id
    with_types = evaluate(model, data.eval_ids, data.eval_labels, 2, pad, 8, "cpu", None, data.eval_type_ids)
    without = evaluate(model, data.eval_ids, data.eval_labels, 2, pad, 8, "cpu", None)
    assert with_types["loss"] != without["loss"]


def test_pairs_are_truncated_together_and_single_texts_encode_as_before(tiny):
    _, tokenizer = tiny
    long = Examples(["word " * 50], ["x"], "long", text_pairs=["other " * 50])
    ids, types = encode_examples(tokenizer, long, max_length=16)
    assert len(ids[0]) == 16 and 1 in types[0]  # both texts kept, the longer cut first
    single = Examples(["the cat sat", "a film"], ["x", "y"], "single")
    assert encode_examples(tokenizer, single, 16) == (encode(tokenizer, single.texts, 16), None)
    task = Task(single, single, ["x", "y"])
    data = encode_task(tokenizer, task, 16)
    assert data.train_type_ids is None and "token_type_ids" not in train_inputs(data, [0, 1], 0, "cpu")


def test_a_tokenizer_without_a_separator_refuses_pairs():
    from lmforge.models.causal_lm import tiny_gpt2_tokenizer

    with pytest.raises(UserError, match="tokenizer .* has no separator token"):  # it would run A and B together
        encode_examples(tiny_gpt2_tokenizer(), pair_task().train, 16)


@pytest.mark.parametrize(
    "recipe, extra, method",
    [
        ("kbert/minilm_sst2", [], "kbert takes single texts"),
        ("crest/minilm_trec6", [], "crest takes single texts"),
        (
            "tinybert/minilm_sst2",
            ["tinybert.teacher=/no/such/run", "tinybert.init_from="],
            "tinybert with tinybert.augment=true takes single",
        ),
        ("continual/minilm_stream", [], "continual takes single texts"),
    ],
)
def test_methods_that_read_one_text_refuse_pairs_naming_themselves(
    tmp_path, monkeypatch, capsys, recipe, extra, method
):
    monkeypatch.chdir(tmp_path)
    no_model = "model.name=/no/such/model"  # without the refusal, the run stops at once on another error
    code = main(
        ["run", recipe, "data.text_pair_column=sentence2", no_model, *extra, "--run-dir", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and method in err[-1] and err[-1].startswith("lmforge: error: data.text_pair_column: "), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_predict_and_explain_refuse_a_run_trained_on_pairs():
    with pytest.raises(UserError, match="run: trained on text pairs .* lmforge predict reads single texts"):
        refuse_pair_run(DataConfig(text_pair_column="sentence2"), "run", "predict")
    refuse_pair_run(DataConfig(), "run", "predict")  # single texts: no refusal
