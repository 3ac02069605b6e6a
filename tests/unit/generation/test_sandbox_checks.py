"""Asserts split into probes (run in the sandbox) and tests (run here), and the strict value channel between them."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.generation.sandbox import run_python
from lmforge.generation.sandbox_checks import (
    Check,
    Match,
    Program,
    Unplain,
    checks_from_asserts,
    decode,
    judge,
    read_results,
)


@pytest.mark.parametrize(
    "tests, under_test, checks",
    [
        ("assert f(1) == [1]", {"f"}, [(("f(1)",), "_probe0 == [1]")]),
        ("assert not f(g(2))", {"f", "g"}, [(("f(g(2))",), "not _probe0")]),
        ("assert set(f(x=1)) == set((1, 2))", {"f"}, [(("f(x=1)",), "set(_probe0) == set((1, 2))")]),
        (
            "assert math.isclose(f(2), 3.1, rel_tol=0.01)",
            {"f"},
            [(("f(2)",), "math.isclose(_probe0, 3.1, rel_tol=0.01)")],
        ),
        ("assert f(1) == f(2)", {"f"}, [(("f(1)", "f(2)"), "_probe0 == _probe1")]),
        ("assert sum(f(root)) == 3", {"f"}, [(("f(root)",), "sum(_probe0) == 3")]),  # root: the child's
        ("assert sorted([3, 1]) == [1, 3]", {"f"}, [((), "sorted([3, 1]) == [1, 3]")]),
        ("assert max(3) == 3", {"max"}, [(("max(3)",), "_probe0 == 3")]),  # the solution's own `max`
        ('"""doc"""\npass\nassert f(1)', {"f"}, [(("f(1)",), "_probe0")]),
    ],
)
def test_asserts_become_probes_and_tests(tests, under_test, checks):
    got = checks_from_asserts(tests, under_test)
    assert [(c.probes, c.test) for c in got] == checks


@pytest.mark.parametrize(
    "tests",
    [
        "assert f(1) == LIMIT",  # a name only the program defines, outside a probe
        "assert obj.method() == 1",  # a call on an object the program made
        "assert all(f(x) for x in range(3))",  # a probe using the comprehension's name
        "x = 1\nassert f(x) == 1",  # not an assert
        "assert f(1) == (",  # not Python
        "assert (lambda y: y)(f(1)) == 1",
    ],
)
def test_asserts_the_parent_cannot_evaluate_are_refused(tests):
    assert checks_from_asserts(tests, {"f"}) is None


def test_every_plain_value_comes_back_exactly():
    expressions = [
        "None",
        "True",
        "0",
        "-(10**5000)",  # past the int -> str digit limit
        "2.5",
        "float('inf')",
        "1 + 2j",
        "'é\\x00\\ud800'",
        "b'\\x00\\xff'",
        "[1, [2, (3,)]]",
        "{1, (2, 'a')}",
        "frozenset({1})",
        "{(1, 2): {'a': [None]}}",
    ]
    # each comes back equal and of the same type, nested values included (repr shows tuple vs list)
    tests = [f"_probe0 == {e} and type(_probe0) is type({e}) and repr(_probe0) == repr({e})" for e in expressions]
    tests[3] = "_probe0 == -(10**5000) and type(_probe0) is int"
    program = Program("", tuple(Check((e,), t, e) for e, t in zip(expressions, tests)))
    result = run_python(program)
    assert result.passed, result.stderr
    negative_zero = run_python(Program("", (Check(("-0.0",), "math.copysign(1, _probe0) == -1", ""),)))
    assert negative_zero.passed, negative_zero.stderr
    # the same values, sent by the child and decoded here
    nan = run_python(
        Program("import collections", (Check(("float('nan')", "collections.Counter('aab')"), "True", ""),))
    )
    assert nan.passed
    got, ended, problem = read_results(
        b"\n".join(json.dumps(["value", v]).encode() for v in [{"f": float("nan").hex()}, {"d": [["a", {"i": "2"}]]}])
        + b'\n["end"]\n'
    )
    assert ended and problem is None and math.isnan(got[0]) and got[1] == {"a": 2}


@pytest.mark.parametrize(
    "expression, shown",
    [
        ("type('Liar', (), {'__eq__': lambda s, o: True})()", "__main__.Liar"),
        ("type('S', (str,), {})('x')", "__main__.S"),
        ("collections.namedtuple('P', 'x')(1)", "__main__.P"),
        ("enum.IntEnum('E', 'A').A", "E"),
        ("[1, type('L', (list,), {})()]", "__main__.L"),
        ("iter([1])", "builtins.list_iterator"),
    ],
)
def test_anything_but_plain_values_fails(expression, shown):
    program = Program("import collections, enum", (Check((expression,), "True", "assert x"),))
    result = run_python(program)
    assert (result.passed, result.status) == (False, "failed")
    assert shown in result.stderr and "only plain builtin values" in result.stderr


def test_a_match_counts_as_true_and_a_cycle_fails():
    matched = run_python(Program("import re", (Check(("re.match('a', 'ab')",), "_probe0", ""),)))
    assert matched.passed, matched.stderr
    cycle = run_python(Program("x = []\nx.append(x)", (Check(("x",), "True", ""),)))
    assert cycle.status == "failed" and "nested more than" in cycle.stderr


@pytest.mark.parametrize(
    "encoded",
    [{"x": 1}, {"i": "zz"}, {"i": 1}, {"d": [[[1], 2]]}, {"s": [[1]]}, {"i": "1", "f": "0x0p+0"}, 3, 1.5, {"m": [1]}],
)
def test_the_decoder_refuses_malformed_records(encoded):
    with pytest.raises(Unplain):
        decode(encoded)


def test_a_value_nested_too_deep_is_refused():
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(Unplain):
        decode(deep)
    values, ended, problem = read_results(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert (values, ended) == ([], False) and problem


def test_judge_compares_in_this_process():
    checks = (Check(("f(1)",), "_probe0 == 'a'", "assert f(1) == 'a'"), Check(("f(2)",), "set(_probe0) == {1}", "s"))
    assert judge(checks, ["a", [1, 1]]) is None
    assert judge(checks, ["b", [1]]) == "AssertionError: assert f(1) == 'a' (the program returned 'b')"
    assert judge(checks, ["a", 5]).startswith("AssertionError: s (TypeError:")
    assert judge((Check(("f()",), "_probe0", "t"),), [Match((0, 1), "a")]) is None
