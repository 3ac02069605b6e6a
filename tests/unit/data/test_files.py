import pytest

from lmforge.data.builtin import BUILTIN_DATASETS
from lmforge.data.files import check_labels, label_set, load_examples, load_task
from lmforge.errors import UserError


def test_builtin_splits_have_the_documented_sizes_and_labels():
    assert len(load_examples("sst2:train")) == 6920
    dev = load_examples("sst2:dev")
    assert len(dev) == 872 and set(dev.labels) == {"negative", "positive"}
    assert set(load_examples("trec6:train").labels) == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert len(set(load_examples("trec50:train").labels)) == 50
    assert set(load_examples("agnews:dev").labels) == {"World", "Sports", "Business", "Sci/Tech"}
    assert [len(load_examples(f"obqa:{split}")) for split in ("train", "dev", "test")] == [4957, 500, 500]


def test_openbookqa_text_holds_the_stem_and_every_choice_in_order():
    dev = load_examples("obqa:dev")
    first = dev.texts[0]  # the first question of dev_complete.jsonl, answer A
    assert first.startswith("Frilled sharks and angler fish live far beneath the surface of the ocean")
    assert first.index("(A) Deep sea animals") < first.index("(B) fish") < first.index("(D) Far Sea Animals")
    assert dev.labels[0] == "A" and set(dev.labels) == {"A", "B", "C", "D"}


@pytest.mark.parametrize("name", ["trec6", "trec50", "agnews"])
def test_carved_dev_splits_are_disjoint_and_deterministic(name):
    train, dev = load_examples(f"{name}:train"), load_examples(f"{name}:dev")
    assert load_examples(f"{name}:dev").texts == dev.texts
    assert len(train) + len(dev) == {"trec6": 5452, "trec50": 5452, "agnews": 10001}[name]


def test_builtin_label_order_is_the_documented_one():
    train = load_examples("trec6:train")
    assert label_set(train, "trec6:train") == BUILTIN_DATASETS["trec6"].labels


def test_user_files_in_three_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"sentence": "good", "y": 1}\n\n{"sentence": "bad", "y": 0}\n')
    (tmp_path / "a.csv").write_text('sentence,y\n"good, really",pos\nbad,neg\n')
    (tmp_path / "a.tsv").write_text("sentence\ty\ngood\tpos\n \tneg\n")
    jsonl = load_examples(str(tmp_path / "a.jsonl"), "sentence", "y")
    assert jsonl.texts == ["good", "bad"] and jsonl.labels == ["1", "0"]
    assert label_set(jsonl, "a.jsonl") == ["0", "1"]
    assert load_examples(str(tmp_path / "a.csv"), "sentence", "y").texts == ["good, really", "bad"]
    tsv = load_examples(str(tmp_path / "a.tsv"), "sentence", "y")
    assert tsv.texts == ["good"] and tsv.skipped == {"empty text": 1}  # counted, not silently dropped


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "file not found"),
        ("empty.csv", b"", "the file is empty"),
        ("cols.csv", b"text,category\nhello,a\n", r"cols.csv:2: no column 'label' \(columns: text, category\)"),
        ("latin.tsv", b"text\tlabel\nok\ta\ncaf\xe9\tb\n", r"latin.tsv:3: byte 0xe9 at column 4 is not UTF-8"),
        ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n', r"bad.jsonl:2: invalid JSON"),
        ("ragged.csv", b"text,label\na,b,c\n", r"ragged.csv:2: 3 fields but the header has 2"),
        ("header.csv", b"text,label\n", "a header line but no data rows"),
        ("data.txt", b"x", "unsupported file type '.txt'"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path, name, content, message):
    path = str(tmp_path / name) if content is None else write(tmp_path, name, content)
    with pytest.raises(UserError, match=message) as info:
        load_examples(path)
    assert "\n" not in str(info.value)


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="not a builtin dataset"):
        load_examples("sst3:train")
    with pytest.raises(UserError, match="no split 'test'"):
        load_examples("sst2:test")


def test_eval_label_never_seen_in_training_names_the_line(tmp_path):
    train = write(tmp_path, "train.csv", b"text,label\na,x\nb,y\n")
    dev = write(tmp_path, "dev.csv", b"text,label\na,x\nc,z\n")
    with pytest.raises(UserError, match=r"dev.csv: line 3 has label 'z', which training never saw \(known: x, y\)"):
        load_task(train, dev, "text", "label")
    check_labels(load_examples(train), ["x", "y"])  # and a clean file passes
