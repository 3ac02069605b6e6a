import json

import pytest
import torch

from lmforge.config import DataConfig
from lmforge.data.pairs import (
    Encoded,
    Pair,
    Pairs,
    carve_dev,
    collate,
    encode_pair,
    encode_pairs,
    file_pairs,
    load_pairs,
    load_train_dev,
)
from lmforge.errors import UserError
from lmforge.methods.sft.config import SftConfig
from lmforge.methods.sft.recipe import completion_loss, held_out_loss
from lmforge.models.causal_lm import tiny_gpt2


class CharTokenizer:
    """One id per character, and a BOS (id 1) before every text unless asked not to: like Gemma's."""

    eos_token_id = 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- pairs ----------------------------------------------------------------------------------------


def test_pairs_of_task_training_splits_are_zero_shot_by_default():
    gsm8k = load_pairs("gsm8k:train", 0, "prompt", "completion")
    first = gsm8k.pairs[0]
    assert len(gsm8k) == 6965 and first.prompt.startswith("Question: ") and first.prompt.endswith("\nAnswer:")
    assert first.prompt.count("Question: ") == 1 and first.completion.startswith(" ") and "####" in first.completion
    assert load_pairs("gsm8k", 2, "prompt", "completion").pairs[0].prompt.count("Question: ") == 3
    mbpp = load_pairs("mbpp:train", 0, "prompt", "completion")
    assert len(mbpp) == 374 and mbpp.pairs[0].prompt.count("[BEGIN]") == 1
    assert mbpp.pairs[0].prompt.endswith("[BEGIN]\n")
    assert mbpp.pairs[0].where == "mbpp/601" and "def " in mbpp.pairs[0].completion
    # the completion ends as the exemplars' answers do, so the few-shot prompts and the target agree
    few_shot = load_pairs("mbpp:train", 2, "prompt", "completion").pairs[0]
    assert few_shot.prompt.count("\n[DONE]\n") == 2 and few_shot.completion == mbpp.pairs[0].completion
    assert mbpp.pairs[0].completion.endswith("\n[DONE]") and mbpp.pairs[0].completion.count("[DONE]") == 1


def test_task_specs_that_cannot_train_are_refused():
    with pytest.raises(UserError, match="'gsm8k:dev' is an evaluation split; train on gsm8k:train"):
        load_pairs("gsm8k:dev", 0, "prompt", "completion")
    with pytest.raises(UserError, match="no training split"):
        load_pairs("humaneval", 0, "prompt", "completion")
    assert len(load_pairs("gsm8k:dev", 0, "prompt", "completion", train=False)) == 500
    with pytest.raises(UserError, match="shots must be between 0 and 3"):
        load_pairs("mbpp:train", 4, "prompt", "completion")


def test_user_files_keep_values_as_written_and_count_skipped_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"q": "2 + 3 =", "a": " 5"},
            {"q": "", "a": " 1"},
            {"q": "7 * 6 =", "a": None},
            {"q": "10 / 2 =", "a": 5},
        ],
    )
    pairs = file_pairs(path, "q", "a")
    assert [(p.prompt, p.completion) for p in pairs.pairs] == [("2 + 3 =", " 5"), ("10 / 2 =", "5")]
    assert pairs.skipped == {"empty prompt": 1, "empty completion": 1}
    assert pairs.pairs[1].where == f"{path}:4"
    assert "2 pairs (1 skipped: empty prompt, 1 skipped: empty completion)" in pairs.describe()
    csv = tmp_path / "pairs.csv"
    csv.write_text('prompt,completion\n"Q: hi\nA:", hello\n')
    assert file_pairs(csv, "prompt", "completion").pairs == [Pair("Q: hi\nA:", " hello", f"{csv}:3")]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", '{"prompt": "a", "answer": "b"}\n', r"missing.jsonl:1: no column 'completion' \(columns: "),
        ("empty.jsonl", "", "empty.jsonl: the file is empty"),
        ("list.jsonl", '{"prompt": "a", "completion": ["b"]}\n', "list.jsonl:1: column 'completion' holds a list"),
        ("blank.jsonl", '{"prompt": " ", "completion": "b"}\n', r"no usable pairs \(1 with an empty prompt\)"),
        ("bad.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": \n', "bad.jsonl:2: invalid JSON"),
        ("short.tsv", "prompt\tcompletion\na\tb\nc\n", "short.tsv:3: 1 fields but the header has 2"),
        ("pairs.txt", "a b\n", "unsupported file type '.txt'"),
    ],
)
def test_bad_files_are_one_clear_error_naming_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_pairs(str(path), 0, "prompt", "completion")


def test_shots_with_a_file_and_a_missing_file_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(UserError, match="sft.shots=2: exemplars come with task data"):
        load_pairs(str(path), 2, "prompt", "completion")
    with pytest.raises(UserError, match="not a task .* and not a file"):
        load_pairs("nope", 0, "prompt", "completion")


def test_the_dev_carve_is_seeded_disjoint_and_independent_of_the_limit(tmp_path):
    pairs = Pairs([Pair(f"p{i}", f"c{i}", str(i)) for i in range(50)], "mine")
    train, dev = carve_dev(pairs, 10)
    assert len(train) == 40 and len(dev) == 10 and not {p.where for p in train.pairs} & {p.where for p in dev.pairs}
    assert carve_dev(pairs, 10)[1].pairs == dev.pairs and dev.source == "mine (held out: 10)"
    with pytest.raises(UserError, match="sft.dev_size=50 leaves no training pairs"):
        carve_dev(pairs, 50)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(50)])
    sft = SftConfig(dev_size=10)
    train5, dev5 = load_train_dev(DataConfig(train=str(path), eval="", max_train_examples=5), sft)
    assert len(train5) == 5 and [p.prompt for p in dev5.pairs] == [p.prompt for p in dev.pairs]
    with pytest.raises(UserError, match="data.eval: .* is the training data"):
        load_train_dev(DataConfig(train=str(path), eval=str(path)), sft)
    own_dev = load_train_dev(DataConfig(train="gsm8k:train", eval="gsm8k:dev", max_eval_examples=3), sft)[1]
    assert len(own_dev) == 3 and own_dev.source == "gsm8k:dev"


# ---- tokens and labels ------------------------------------------------------------------------------


def test_prompt_then_completion_then_eos_and_labels_mask_prompt_and_padding():
    _, tok = tiny_gpt2()
    ids, prompt_length, cut = encode_pair(tok, "Question: 2 + 3 ?\nAnswer:", " 5", 64)
    prompt_ids = tok("Question: 2 + 3 ?\nAnswer:")["input_ids"]
    assert ids == prompt_ids + tok(" 5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert prompt_length == len(prompt_ids) and not cut
    short, short_prompt, _ = encode_pair(tok, "Q:", " yes", 64)
    batch = collate([ids, short], [prompt_length, short_prompt], tok.pad_token_id)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert batch["input_ids"].shape == labels.shape == (2, len(ids))
    assert (labels[0, :prompt_length] == -100).all() and labels[0, prompt_length:].tolist() == ids[prompt_length:]
    assert labels[0, -1] == tok.eos_token_id  # EOS is supervised: the model learns to stop
    assert labels[1, :short_prompt].eq(-100).all()
    assert labels[1, short_prompt : len(short)].tolist() == short[short_prompt:]
    assert labels[1, len(short) :].eq(-100).all() and mask[1, len(short) :].eq(0).all()  # padding ignored
    assert batch["input_ids"][1, len(short) :].eq(tok.pad_token_id).all()


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_bos_and_the_whole_completion():
    tok = CharTokenizer()
    assert encode_pair(tok, "abcdef", "XY", 10) == ([1, *map(ord, "abcdef"), ord("X"), ord("Y"), 2], 7, False)
    ids, prompt_length, cut = encode_pair(tok, "abcdefghij", "XY", 8)  # 11 + 3 tokens: 6 too many
    assert ids == [1, *map(ord, "ghij"), ord("X"), ord("Y"), 2] and prompt_length == 5 and cut
    assert encode_pair(tok, "abc", "XYZWV", 6) is None  # BOS + 1 prompt token + 5 + EOS > 6
    pairs = Pairs([Pair("abc", "XY", "1"), Pair("abc", "XYZWVU", "2")], "mine")
    kept, data = encode_pairs(tok, pairs, 6)
    assert [p.where for p in kept.pairs] == ["1"] and kept.skipped == {"completions longer than model.max_length": 1}
    assert data.targets(0) == 3  # X, Y, EOS
    with pytest.raises(UserError, match="every completion is longer than model.max_length=3"):
        encode_pairs(tok, pairs, 3)


def test_the_loss_is_the_mean_cross_entropy_of_completion_tokens_by_hand():
    model, tok = tiny_gpt2(seed=1)
    pairs = [("Question: 2 + 3 ?\nAnswer:", " 5 #### 5"), ("Q: the movie ?\nA:", " good")]
    encoded = [encode_pair(tok, p, c, 64) for p, c in pairs]
    batch = collate([e[0] for e in encoded], [e[1] for e in encoded], tok.pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
        summed, count = completion_loss(model, batch, labels)
        by_hand, n = 0.0, 0
        for i, (ids, prompt_length, _) in enumerate(encoded):
            for j in range(prompt_length, len(ids)):  # token j is predicted from position j - 1
                by_hand -= torch.log_softmax(logits[i, j - 1], dim=-1)[ids[j]].item()
                n += 1
        assert count == n == sum(len(ids) - p for ids, p, _ in encoded)
        assert summed.item() == pytest.approx(by_hand, rel=1e-5)
        hf = model(**batch, labels=labels).loss.item()  # transformers' own shifted, masked mean
        assert summed.item() / count == pytest.approx(hf, rel=1e-5)
        held = held_out_loss(
            model, Encoded([e[0] for e in encoded], [e[1] for e in encoded]), tok.pad_token_id, 1, "cpu"
        )
        assert held["loss"] == pytest.approx(by_hand / n, rel=1e-5)
        assert held["perplexity"] == pytest.approx(torch.tensor(by_hand / n).exp().item(), rel=1e-5)
