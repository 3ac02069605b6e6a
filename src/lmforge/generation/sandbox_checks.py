"""Verdicts the sandboxed program cannot forge (`generation/sandbox.py`): its tests are judged in the parent.

A test such as `assert remove_Occ("hello", "l") == "heo"` is split in two (`checks_from_asserts`):
- the *probe* `remove_Occ("hello", "l")`: the call into the program's code, evaluated in the sandbox
  after the program ran;
- the *test* `_probe0 == "heo"`: evaluated here, in the parent, on the probe's value.

The child sends each probe's value over a pipe, encoded by a strict encoder that accepts only plain
builtin values, by exact type (None, bool, int, float, complex, str, bytes, list, tuple, set,
frozenset, dict; dict's stdlib subclasses OrderedDict / defaultdict / Counter count as dicts; a
re.Match arrives as a `Match`, which is true, for tests such as `assert text_match("ab")`), and
the parent rebuilds them with its own decoder. So:
- an object whose `__eq__` always returns True never reaches a comparison: it is not a plain value;
- the expected values ("heo") are in no process the program runs in, and nothing marks success: the
  child only reports values. Whatever it writes to the pipe (also on purpose) is only a claim about
  what its function returned, and it passes only if that claim equals the expected value, which the
  program would have to know. (MBPP shows its tests in the prompt, so a program can still hard-code
  the answers it was shown; that is a property of the benchmark, not of the sandbox.)

A test the compiler cannot split (it uses a name only the program or the setup defines outside a
probe, or it is not an assert) makes `checks_from_asserts` return None; the task then runs the tests
inside the program ("raw" mode), where the verdict is "ran to the end with exit status 0" and a program
written to forge it can (docs/sandbox.md says which tasks and problems).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

# Modules a test may name outside its probes: imported here to evaluate the test (standard library only).
PARENT_MODULES = frozenset(
    {"math", "cmath", "sys", "re", "string", "collections", "itertools", "heapq", "functools", "operator"}
)
_BUILTIN_NAMES = frozenset(dir(builtins))
MAX_DEPTH = 200  # nesting the child may send; deeper values fail (the decoder recurses)


@dataclass(frozen=True)
class Check:
    """One test: `probes` run in the sandbox, `test` (naming them _probe0, _probe1, ...) runs here."""

    probes: tuple[str, ...]
    test: str
    source: str  # the original assert, for the failure message


@dataclass(frozen=True)
class Program:
    """What the sandbox runs: `code`, then each check's probes; `checks` empty: the code is the whole test.

    `hidden`: folders holding reference data (solutions, expected values), hidden from the program
    where the sandbox has a mount namespace (`isolation().private_mounts`).
    """

    code: str
    checks: tuple[Check, ...] = ()
    hidden: tuple[str, ...] = ()

    @property
    def probes(self) -> list[str]:
        return [probe for check in self.checks for probe in check.probes]


def checks_from_asserts(tests: str, under_test: Collection[str]) -> tuple[Check, ...] | None:
    """Each `assert` of `tests` as a Check; None if a statement is not an assert or cannot be split
    (docstrings and `pass` are skipped).

    A probe is an outermost call of a function the program defines: a name in `under_test`, or any
    called name that is neither a builtin nor a module of PARENT_MODULES. What remains of the assert
    may name only builtins, those modules and the probes.
    """
    try:
        with warnings.catch_warnings():  # the tests' own invalid escapes ("\d") are theirs to keep
            warnings.simplefilter("ignore")
            statements = ast.parse(tests).body
    except SyntaxError:
        return None
    checks = []
    for statement in statements:
        if isinstance(statement, ast.Pass) or (
            isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
        ):
            continue
        if not isinstance(statement, ast.Assert):
            return None
        source = ast.unparse(statement)  # before the cutter rewrites the tree in place
        probes: list[str] = []
        test = _ProbeCutter(set(under_test), probes).visit(statement.test)
        free = {node.id for node in ast.walk(test) if isinstance(node, ast.Name)}
        if free - _BUILTIN_NAMES - PARENT_MODULES - {f"_probe{i}" for i in range(len(probes))}:
            return None
        checks.append(Check(tuple(probes), ast.unparse(test), source))
    return tuple(checks)


class _ProbeCutter(ast.NodeTransformer):
    def __init__(self, under_test: set[str], probes: list[str]):
        self.under_test, self.probes = under_test, probes

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if isinstance(func, ast.Name) and (
            func.id in self.under_test or func.id not in _BUILTIN_NAMES | PARENT_MODULES
        ):
            self.probes.append(ast.unparse(node))
            return ast.Name(f"_probe{len(self.probes) - 1}", ast.Load())
        return self.generic_visit(node)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node  # its parameters are names of its own: leave it whole (the free-name check refuses it)


# ---------------------------------------------------------------------------------------------------
# The child's side: a harness the sandbox's interpreter runs with `-c`. It reads {"code", "probes"}
# from stdin, runs the code as __main__, evaluates each probe, and writes one JSON line per probe to
# the result fd, then ["end"]. Only plain values pass its encoder; anything else is reported by type.

HARNESS = r"""
import os, sys, types
def _lmforge_harness():
    import json
    out = int(sys.argv[1])
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
    dicts = {dict}
    try:
        import collections
        dicts |= {collections.OrderedDict, collections.defaultdict, collections.Counter}
    except ImportError:
        pass
    plain_type, dict_items = type, dict.items
    import re
    match_type = plain_type(re.match("", ""))  # taken before the program runs

    def encode(value, depth):
        if depth > MAX_DEPTH:
            raise ValueError("nested more than MAX_DEPTH deep")
        t = plain_type(value)
        if value is None or t is bool or t is str:
            return value
        if t is int:
            return {"i": format(value, "x")}
        if t is float:
            return {"f": value.hex()}
        if t is complex:
            return {"c": [value.real.hex(), value.imag.hex()]}
        if t is bytes:
            return {"b": value.hex()}
        if t is list:
            return [encode(v, depth + 1) for v in value]
        for kind, tag in ((tuple, "t"), (set, "s"), (frozenset, "F")):
            if t is kind:
                return {tag: [encode(v, depth + 1) for v in value]}
        if t in dicts:
            return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict_items(value)]}
        if t is match_type:  # tests such as `assert text_match("ab")` take a re.Match as true
            return {"m": [encode(value.span(), depth + 1), encode(value.group(0), depth + 1)]}
        raise TypeError("a " + t.__module__ + "." + t.__qualname__ + " (only plain builtin values are compared)")

    def send(record):
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(out, data):]

    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    exec(compile(payload["code"], "<program>", "exec"), main.__dict__)
    for i, probe in enumerate(payload["probes"]):
        value = eval(compile(probe, "<test " + str(i + 1) + ">", "eval"), main.__dict__)
        try:
            record = ["value", encode(value, 0)]
        except (TypeError, ValueError, RecursionError) as e:
            record = ["unplain", str(e)[:300]]
        send(record)
    send(["end"])
_lmforge_harness()
""".replace("MAX_DEPTH", str(MAX_DEPTH))


def payload(program: Program) -> bytes:
    return json.dumps({"code": program.code, "probes": program.probes}).encode()


# ---------------------------------------------------------------------------------------------------
# The parent's side.


@dataclass(frozen=True)
class Match:
    """A re.Match the program returned: true, like every match (equal only to a Match of the same span and text)."""

    span: tuple
    text: str


class Unplain(ValueError):
    """The child sent something that is not a well-formed plain value."""


def decode(encoded: object, depth: int = 0) -> object:
    """The plain value an encoded record stands for; Unplain for anything else."""
    if depth > MAX_DEPTH:
        raise Unplain("nested too deeply")
    if encoded is None or type(encoded) in (bool, str):
        return encoded
    if type(encoded) is list:
        return [decode(v, depth + 1) for v in encoded]
    if type(encoded) is not dict or len(encoded) != 1:
        raise Unplain(f"not an encoded value: {type(encoded).__name__}")
    ((tag, body),) = encoded.items()
    try:
        if tag == "i":
            return int(body, 16)
        if tag == "f":
            return float.fromhex(body)
        if tag == "c":
            return complex(float.fromhex(body[0]), float.fromhex(body[1]))
        if tag == "b":
            return bytes.fromhex(body)
        items = [decode(v, depth + 1) for v in body]
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "F":
            return frozenset(items)
        if tag == "d":
            return {k: v for k, v in items}
        if tag == "m":
            span, text = items
            return Match(tuple(span), text)
    except (TypeError, ValueError, IndexError) as e:  # a malformed body, or an unhashable key
        raise Unplain(f"malformed {tag!r} value: {e}") from None
    raise Unplain(f"unknown tag {tag!r}")


def read_results(data: bytes) -> tuple[list[object], bool, str | None]:
    """(probe values, whether ["end"] came last, the first problem) from the child's result pipe."""
    values: list[object] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return values, False, "the result pipe held something that is not a result"
        if record == ["end"]:
            return values, True, None
        if type(record) is list and len(record) == 2 and record[0] == "unplain" and type(record[1]) is str:
            return values, False, f"TypeError: test {len(values) + 1} returned {record[1]}"
        if type(record) is not list or len(record) != 2 or record[0] != "value":
            return values, False, "the result pipe held something that is not a result"
        try:
            values.append(decode(record[1]))
        except (Unplain, RecursionError) as e:
            return values, False, f"test {len(values) + 1}: {e}"
    return values, False, None


def judge(checks: Sequence[Check], values: Sequence[object]) -> str | None:
    """None when every check holds on the values; otherwise the failure line (an AssertionError)."""
    modules = {name: importlib.import_module(name) for name in PARENT_MODULES}
    i = 0
    for check in checks:
        names = {f"_probe{k}": values[i + k] for k in range(len(check.probes))}
        i += len(check.probes)
        try:  # the task's own test text, on plain values: only builtins run
            holds = bool(eval(check.test, {"__builtins__": builtins, **modules}, names))
        except Exception as e:  # e.g. set() of an int: the assert would have raised too
            return f"AssertionError: {check.source} ({type(e).__name__}: {e})"[:500]
        if not holds:
            shown = ", ".join(_short(values[i - len(check.probes) + k]) for k in range(len(check.probes)))
            return f"AssertionError: {check.source} (the program returned {shown})"
    return None


def _short(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past the digit limit of int -> str
        text = f"an int of {value.bit_length()} bits"  # type: ignore[attr-defined]
    return text if len(text) <= 200 else text[:200] + "..."
