"""User data files that used to crash (exit 1) or be resolved silently: each is now one UserError
naming the file and line (issue 23 items 9 and 10). Through the loaders the CLI calls."""

import json

import pytest

from lmforge.data.files import label_set, load_examples, load_task, read_texts
from lmforge.errors import UserError


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def refused(call, *args) -> str:
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and len(message) < 500, message
    return message


def test_a_csv_field_longer_than_csvs_limit_names_the_line(tmp_path):
    path = write(tmp_path, "long.csv", "text,label\nfine,a\n" + "x" * 131_073 + ",b\nok,a\n")
    message = refused(load_examples, str(path))
    assert message.startswith(f"{path}:3: unreadable csv row: field larger than field limit (131072)")


def test_a_tsv_field_longer_than_the_limit_inside_quotes_names_its_last_line(tmp_path):
    path = write(tmp_path, "long.tsv", 'text\tlabel\nfine\ta\n"two\n' + "y" * 131_073 + '"\tb\n')
    assert refused(load_examples, str(path)).startswith(f"{path}:4: unreadable tsv row")


@pytest.mark.parametrize("name", ["header.csv", "header.tsv"])
def test_a_column_named_twice_is_refused_not_resolved_to_the_last(tmp_path, name):
    sep = "," if name.endswith("csv") else "\t"
    path = write(tmp_path, name, sep.join(["text", "label", "text"]) + "\n" + sep.join(["a", "x", "b"]) + "\n")
    assert refused(load_examples, str(path)) == f"{path}:1: column 'text' appears twice in the header"


def test_a_key_given_twice_in_a_json_line_is_refused(tmp_path):
    path = write(tmp_path, "twice.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x", "label": "y"}\n')
    assert refused(load_examples, str(path)) == f"{path}:2: invalid JSON (key 'label' appears twice in one object)"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path, constant):
    path = write(tmp_path, "nan.jsonl", f'{{"text": "a", "label": 1}}\n{{"text": "b", "label": {constant}}}\n')
    assert refused(load_examples, str(path)) == f"{path}:2: invalid JSON ({constant} is not a JSON value)"


@pytest.mark.parametrize(
    "label, message",
    [
        ("0.5", "label 0.5 is not a whole number"),
        ("1e400", "label inf is not a whole number"),  # JSON's parser reads it as infinity
        ('["a"]', "a label must be a string or a number, got a JSON list"),
        ('{"a": 1}', "a label must be a string or a number, got a JSON dict"),
    ],
)
def test_labels_that_name_no_class_are_refused(tmp_path, label, message):
    path = write(tmp_path, "odd.jsonl", f'{{"text": "a", "label": 1}}\n{{"text": "b", "label": {label}}}\n')
    assert refused(load_examples, str(path)) == f"{path}:2: column 'label': {message}" + (
        "; a number label names a class (1 and 1.0 are both class 1): write a fractional label as a string"
        if "whole" in message
        else ""
    )


def test_json_line_an_integer_past_pythons_digit_limit_or_nested_too_deeply(tmp_path):
    path = write(tmp_path, "big.jsonl", '{"text": "a", "label": ' + "9" * 5000 + "}\n")
    assert refused(load_examples, str(path)).startswith(f"{path}:1: invalid JSON (Exceeds the limit")
    path = write(tmp_path, "deep.jsonl", '{"text": "a", "label": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert refused(load_examples, str(path)) == f"{path}:1: invalid JSON (nested too deeply)"


def test_one_and_one_point_zero_are_one_class(tmp_path):
    """The documented normalisation: a JSON number label that is a whole number is that integer's class."""
    rows = [("a", 1), ("b", 1.0), ("c", 0), ("d", -2.0), ("e", "1"), ("f", True)]
    path = write(tmp_path, "n.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    examples = load_examples(str(path))
    assert examples.labels == ["1", "1", "0", "-2", "1", "True"]
    assert label_set(examples, str(path)) == ["-2", "0", "1", "True"]


@pytest.mark.parametrize("second", ["1.0", "01", "+1", "1e0"])
def test_one_number_written_two_ways_in_a_csv_is_refused(tmp_path, second):
    path = write(tmp_path, "n.csv", f"text,label\na,1\nb,0\nc,{second}\n")
    message = refused(load_task, str(path), str(path), "text", "label")
    assert message == (
        f"{path}: labels '1' (line 2) and '{second}' (line 4) are one number written two ways; "
        "write each class the same way"
    )


@pytest.mark.parametrize("odd", ["²", "٣", "1²"])  # str.isdigit() is True for these, int() refuses them
def test_labels_that_look_like_digits_to_isdigit_sort_as_strings(tmp_path, odd):
    path = write(tmp_path, "d.csv", f"text,label\na,1\nb,{odd}\nc,2\n")
    assert label_set(load_examples(str(path)), str(path)) == sorted(["1", "2", odd])


def test_numeric_labels_still_sort_as_numbers(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\na,10\nb,9\nc,-1\n")
    assert label_set(load_examples(str(path)), str(path)) == ["-1", "9", "10"]


def test_a_plain_text_file_that_is_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "texts.txt", b"first\nsecond caf\xe9\n")
    assert refused(read_texts, path) == f"{path}:2: byte 0xe9 at column 11 is not UTF-8; re-save the file as UTF-8"
    assert read_texts(write(tmp_path, "ok.txt", "\ufeffone\n\ntwo\n")) == ["one", "two"]


def test_echoed_names_are_cut_short(tmp_path):
    header = ",".join(f"column_{i}" for i in range(5000))
    path = write(tmp_path, "wide.csv", header + "\n" + ",".join("x" * 5000) + "\n")
    assert "no column 'text'" in refused(load_examples, str(path))
