import json

import pytest

from lmforge.errors import UserError
from lmforge.tasks import gsm8k
from lmforge.tasks.base import Problem


def test_carve_is_disjoint_complete_and_documented():
    exemplars, dev, train = gsm8k.carve(7473)
    assert (len(exemplars), len(dev), len(train)) == (8, 500, 6965)
    assert exemplars == list(range(8))
    assert sorted(exemplars + dev + train) == list(range(7473))
    assert gsm8k.carve(7473) == (exemplars, dev, train)
    # pinned: a change of the seed or of Python's shuffle would silently move the dev set
    assert dev[:5] == [24, 69, 102, 111, 130]


def test_splits_have_the_documented_sizes_and_references_score_correct():
    dev, train = gsm8k.problems("dev"), gsm8k.problems("train")
    assert len(dev) == 500 and len(train) == 6965
    assert not {p.id for p in dev} & {p.id for p in train}
    assert dev[0].id == "gsm8k/25" and dev[0].data["answer"] == "62"
    assert all(gsm8k.is_correct(p, p.reference) for p in dev + train)
    assert gsm8k.problems("dev", limit=3) == dev[:3]


def test_prompt_format():
    problem = gsm8k.problems("dev", limit=1)[0]
    assert problem.prompt.count("Question: ") == 9 and problem.prompt.count("\n#### ") == 8
    assert problem.prompt.startswith("Question: Natalia sold clips to 48 of her friends")
    assert problem.prompt.endswith(f"Question: {problem.data['question']}\nAnswer:")
    assert "<<" not in problem.prompt and "<<" not in problem.reference  # calculator annotations removed
    assert "Natalia sold 48/2 = 24 clips in May." in problem.prompt
    assert problem.reference.startswith(" ") and problem.reference.endswith("#### 62")
    zero = gsm8k.problems("dev", limit=1, shots=0)[0]
    assert zero.prompt == f"Question: {problem.data['question']}\nAnswer:"
    assert gsm8k.problems("dev", limit=1, shots=4)[0].prompt.count("Question: ") == 5
    with pytest.raises(UserError, match="shots must be between 0 and 8"):
        gsm8k.problems("dev", shots=9)
    with pytest.raises(UserError, match=r"no split 'test' \(splits: train, dev\)"):
        gsm8k.problems("test")
    with pytest.raises(UserError, match="limit must be a positive"):
        gsm8k.problems("dev", limit=0)


@pytest.mark.parametrize(
    "completion, answer",
    [
        (" She sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("It costs $1,234,567.", "1234567"),
        ("#### $18", "18"),
        ("#### 18.00", "18"),
        ("She pays 18 dollars.", "18"),
        ("The discount is 18%.", "18"),
        ("The answer is 18.", "18"),
        ("So the final answer is $18.50 per hour", "18.5"),
        ("THE ANSWER IS: 7 apples, not 9", "7"),
        ("The temperature drops to -5 degrees.", "-5"),
        ("#### -3", "-3"),
        ("He lost -$20 today", "-20"),
        ("He lost $-20 today", "-20"),
        ("x \u2212 4 = \u22124", "-4"),
        ("8-5=3", "3"),  # a subtraction, not a negative number
        ("Half is .5 of it", "0.5"),
        ("#### 0.50", "0.5"),
        ("#### 100", "100"),  # no exponent form ("1E+2")
        ("#### 0.0", "0"),
        ("She has 3 cats and 4 dogs, so 7 pets.", "7"),  # the last number
        ("#### 12\nThen 5 more", "12"),  # #### wins over the last number
        ("The answer is 30. Check: 30 - 10 = 20", "30"),  # "The answer is" wins over the last number
        ("Then 4 * 5 = 20 #### 20 The answer is 7", "20"),  # #### wins over "The answer is"
        ("#### \nNo number here, 41 in the end", "41"),  # #### without a number: fall back
        ("The answer is 5\n\nQuestion: Tom has 9 apples. #### 9", "5"),  # cut at the stop sequence
        ("Room 3B has 2 windows", "2"),
        ("It is in 2x faster", "2"),
        ("no number at all", None),
        ("", None),
    ],
)
def test_extract_answer(completion, answer):
    assert gsm8k.extract_answer(completion) == answer


def test_is_correct_compares_numbers():
    problem = Problem("gsm8k/x", "Question: q\nAnswer:", " 9 * 2 = 18\n#### 18", {"answer": "18"})
    for right in ["#### 18", "#### 18.00", "The answer is $18.", "so 18", " 18.0 dollars"]:
        assert gsm8k.is_correct(problem, right), right
    for wrong in ["#### 180", "#### 1.8", "The answer is 17. Later 18", "none", "#### -18"]:
        assert not gsm8k.is_correct(problem, wrong), wrong


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD = {"question": "q", "answer": "1+1=<<1+1=2>>2\n#### 2"}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ('{"question": "q", "answer": "#### 2"}\n{"question": \n', r"train.jsonl:2: invalid JSON"),
        ('{"question": "q"}\n', r"train.jsonl:1: missing key\(s\) answer"),
        ('{"question": "q", "answer": "no final line"}\n', r"train.jsonl:1: the answer has no '#### N' line"),
        ('{"question": "q", "answer": "#### two"}\n', r"train.jsonl:1: the text after '####' is not a number"),
        ("[1, 2]\n", r"train.jsonl:1: expected a JSON object"),
        (json.dumps(GOOD) + "\n", "1 problems; the carve needs more than 508"),
    ],
)
def test_bad_data_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        gsm8k.problems("dev", path=path)


def test_a_small_file_carves_like_the_bundled_one(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"{i} + 0 = <<{i}+0={i}>>{i}\n#### {i:,}"} for i in range(600)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dev, train = gsm8k.problems("dev", path=path), gsm8k.problems("train", path=path)
    assert len(dev) == 500 and len(train) == 92
    assert all(gsm8k.is_correct(p, p.reference) for p in dev + train)
    assert dev[0].prompt.startswith("Question: q0\nAnswer: 0 + 0 = 0\n#### 0\n\nQuestion: q1\n")
