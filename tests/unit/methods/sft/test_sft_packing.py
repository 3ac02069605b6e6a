"""Sequence packing for SFT (data/packing.py): what it changes (fewer rows, less padding), what it must
not change (each example's tokens and truncation, the loss: equal to the unpacked mean token loss to
1e-5 on tiny-gpt2 in float32), and the check that refuses a model whose packed examples see each other."""

import json

import pytest
import torch
from conftest import run_cli
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2LMHeadModel

from lmforge.data.packing import collate_packed, pack_rows
from lmforge.data.pairs import Pair, Pairs, collate_examples, encode_pairs
from lmforge.errors import UserError
from lmforge.methods.sft.recipe import check_isolation, completion_loss
from lmforge.models.causal_lm import tiny_gpt2

MAX_LENGTH = 48


def test_rows_are_filled_best_fit_decreasing_and_hold_every_example_once():
    lengths = [5, 9, 3, 7, 2, 4]
    # 9, 7, 5 open rows; 4 fills the row of 5 (room 5, the best fit); 3 the row of 7; 2 fits nowhere
    assert pack_rows(lengths, 10) == [[0, 5], [1], [2, 3], [4]]
    rows = pack_rows([(7 * i) % 23 + 1 for i in range(200)], 40)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum((7 * i) % 23 + 1 for i in row) <= 40 for row in rows)
    with pytest.raises(ValueError, match="longer than max_length=10"):
        pack_rows([11], 10)


@pytest.fixture(scope="module")
def packed_case():
    model, tokenizer = tiny_gpt2(seed=3)  # float32, eval mode
    words = "the cat sat on a mat and then it ran to the old red barn by the green hill".split()
    pairs = [
        Pair(f"Q{i}: " + " ".join(words[: 2 + i % 7]) + "\nA:", " " + " ".join(words[i % 5 : 3 + i % 11]), f"t:{i}")
        for i in range(14)
    ]
    pairs.append(Pair("Q: " + " ".join(words * 4) + "\nA:", " a long prompt, cut from the left", "t:long"))
    kept, data = encode_pairs(tokenizer, Pairs(pairs, "t"), MAX_LENGTH)
    return model, tokenizer, kept, data


def test_packing_uses_fewer_rows_less_padding_and_keeps_each_example_as_truncated_unpacked(packed_case):
    model, tokenizer, kept, data = packed_case
    lengths = [len(x) for x in data.ids]
    long = len(kept) - 1
    assert len(kept) == 15 and lengths[long] == MAX_LENGTH  # the long pair was truncated, not dropped
    rows = pack_rows(lengths, MAX_LENGTH)
    unpacked = collate_examples(data, list(range(len(data))), tokenizer.pad_token_id)
    packed = collate_packed(data, rows, tokenizer.pad_token_id)
    tokens = sum(lengths)
    unpacked_padding = unpacked["input_ids"].numel() - tokens
    packed_padding = packed["input_ids"].numel() - tokens
    assert (len(data), unpacked_padding) == (15, 359) and (len(rows), packed_padding) == (8, 23)
    assert [long] in rows  # a full-length example is a row of its own
    # each example is in its row unchanged, positions restarting at 0
    b, row = next((b, row) for b, row in enumerate(rows) if len(row) > 1)
    start = 0
    for i in row:
        n = len(data.ids[i])
        assert packed["input_ids"][b, start : start + n].tolist() == data.ids[i]
        assert packed["position_ids"][b, start : start + n].tolist() == list(range(n))
        start += n


def test_a_packed_batch_has_the_loss_of_its_examples_unpacked(packed_case):
    model, tokenizer, _, data = packed_case
    rows = pack_rows([len(x) for x in data.ids], MAX_LENGTH)
    unpacked = collate_examples(data, list(range(len(data))), tokenizer.pad_token_id)
    unpacked_sum, unpacked_count = completion_loss(model, unpacked, unpacked.pop("labels"))
    packed = collate_packed(data, rows, tokenizer.pad_token_id)
    labels = packed.pop("labels")
    packed_sum, packed_count = completion_loss(model, packed, labels)
    assert packed_count == unpacked_count == sum(data.targets(i) for i in range(len(data)))
    assert abs(packed_sum.item() / packed_count - unpacked_sum.item() / unpacked_count) < 1e-5
    # the isolation is what makes them equal: with the KV cache transformers makes by default, examples leak
    # and the mean moves by ten times the tolerance
    leaky_sum, _ = completion_loss(model, {**packed, "use_cache": True}, labels)
    assert abs(leaky_sum.item() - packed_sum.item()) / packed_count > 5e-5


class GPT2WithCache(GPT2LMHeadModel):
    """GPT-2 that always builds its KV cache: transformers then ignores packed position_ids."""

    def forward(self, *args, use_cache=None, **kwargs):
        return super().forward(*args, use_cache=True, **kwargs)


def test_packing_is_refused_for_a_model_whose_packed_examples_see_each_other():
    model, _ = tiny_gpt2(seed=0)
    model.train()
    check_isolation(model, "tiny-gpt2")
    assert model.training  # the check runs in eval mode (no dropout) and leaves the mode as it was
    gemma = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    check_isolation(Gemma3ForCausalLM(gemma), "gemma3")  # sliding-window layers isolate the examples too
    leaky = GPT2WithCache(model.config)
    with pytest.raises(UserError, match="sft.packing: leaky's attention lets packed examples see each other"):
        check_isolation(leaky, "leaky")
    assert torch.is_grad_enabled()


@pytest.mark.slow  # the CLI in a fresh process
def test_sft_on_chat_records_with_packing_end_to_end(tmp_path):
    turns = [
        [{"role": "user", "content": f"What is {i}+{i}?"}, {"role": "assistant", "content": f"{2 * i}."}]
        for i in range(24)
    ]
    turns[0] = [{"role": "system", "content": "Answer briefly."}, *turns[0], *turns[1]]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in turns))
    template = tmp_path / "chat.jinja"
    template.write_text(
        "{% for m in messages %}{{ m.role }}| {{ m.content }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant|{% endif %}"
    )
    run_dir = tmp_path / "run"
    result = run_cli(
        "run",
        "sft/gemma_gsm8k",
        "model.name=tiny-gpt2",
        "model.max_length=64",
        f"data.train={data}",
        "sft.messages_column=messages",
        f"sft.chat_template={template}",
        "sft.packing=true",
        "sft.target_modules=c_attn,c_proj,c_fc",
        "sft.dev_size=4",
        "train.batch_size=2",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.eval_batch_size=8",
        "--run-dir",
        str(run_dir),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "packing: 20 examples in" in result.stderr
    summary = json.loads((run_dir / "sft_data.json").read_text())
    assert summary["train"]["source"] == str(data) and summary["train"]["pairs"] == 20
    assert summary["packing"]["rows"] < 20 and summary["packing"]["max_length"] == 64
    first = summary["examples"][0]  # the record of line 1: a system message and two user/assistant turns
    assert first["where"] == f"{data}:1"
    trained = "".join(text for text, supervised in first["tokens"] if supervised)
    assert trained == " 0.<|endoftext|> 2.<|endoftext|>"  # both assistant turns, each ended by the template's EOS
    final = json.loads((run_dir / "final.json").read_text())
    assert final["train_pairs"] == 20 and final["metrics"]["loss"] > 0
    assert "{{ m.role }}|" in (run_dir / "final" / "chat_template.jinja").read_text()  # served as trained
