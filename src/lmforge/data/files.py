"""Text-classification data: builtin datasets by name, the user's jsonl / csv / tsv files, and the tables
`datasets` reads (.parquet, .arrow, save_to_disk folders, hub datasets: data/hub.py).

A split is named `dataset:split` (`sst2:train`, `trec6:dev`, `hub:nyu-mll/glue:validation`) or given as a
file path. Every bad input is one UserError naming the file and line (a table: its row); rows are never
dropped silently: rows with an empty text, text pair or label are skipped and counted in `Examples.skipped`.

A text pair (NLI, paraphrase: `data.text_pair_column`) is kept as two texts, `Examples.texts` and
`Examples.text_pairs`, so the tokenizer sees the pair (data/classify.py); the builtin datasets have none.

Files are read with the standard library rather than `datasets` so that an error can name the
exact line, and a non-UTF-8 byte its line and column. What would otherwise be resolved silently is
refused: a column named twice in a header (or a key twice in a JSON object), JSON's NaN and Infinity.

Labels are strings. A JSON number label is read as the class of that whole number, so `1` and `1.0`
are both class "1"; a fractional or non-finite number label is refused (write it as a string). Two
label strings that are one number written two ways ("1" and "1.0", "01") are refused, not two classes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmforge.data import hub
from lmforge.data.builtin import BUILTIN_DATASETS, builtin_label_order
from lmforge.errors import UserError, cut, shown

SUFFIXES = (".jsonl", ".csv", ".tsv")


@dataclass
class Examples:
    texts: list[str]
    labels: list[str]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)
    lines: list[int] | None = None  # line number of each example in a user file (a table: its row number)
    text_pairs: list[str] | None = None  # the second text of each example (data.text_pair_column), or None
    label_order: list[str] | None = None  # a table's class names (a ClassLabel column), in the dataset's order
    position: str = "line"  # what `lines` counts: a text file's lines, a table's rows

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> Examples:
        if n <= 0 or n >= len(self):
            return self
        return replace(
            self,
            texts=self.texts[:n],
            labels=self.labels[:n],
            lines=self.lines[:n] if self.lines else None,
            text_pairs=self.text_pairs[:n] if self.text_pairs is not None else None,
        )

    def where(self, i: int) -> str:
        """Where example i came from, for a message: "line 12", "row 7" or "example 3"."""
        return f"{self.position} {self.lines[i]}" if self.lines else f"example {i + 1}"


# ---- loading ----------------------------------------------------------------------------------


def load_examples(
    spec: str,
    text_column: str = "text",
    label_column: str = "label",
    default_split: str = "train",
    text_pair_column: str = "",
    subset: str = "",
) -> Examples:
    """Load a builtin split (`sst2:dev`), a user file, or a table `datasets` reads (`hub:OWNER/NAME:SPLIT`
    with its `subset`, a .parquet / .arrow file, a save_to_disk folder); raises UserError on bad input.
    With `text_pair_column`, each example is a text pair."""
    name, _, split = spec.partition(":")
    if name in BUILTIN_DATASETS:
        ds = BUILTIN_DATASETS[name]
        split = split or default_split
        if split not in ds.splits:
            raise UserError(f"dataset {name!r} has no split {split!r} (splits: {', '.join(ds.splits)})")
        if text_pair_column:
            raise UserError(
                f"data.text_pair_column: builtin dataset {name!r} has single texts, no column "
                f"{shown(text_pair_column)} of second texts; use a file or hub dataset of text pairs"
            )
        texts, labels = ds.splits[split]()
        return Examples(texts, labels, f"{name}:{split}")
    if hub.is_table_spec(spec):
        return read_table(hub.open_table(spec, default_split, subset), text_column, label_column, text_pair_column)
    path = Path(spec).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        if not path.exists():
            raise UserError(
                f"data {spec!r}: not a builtin dataset ({', '.join(BUILTIN_DATASETS)}), not a file, and not a "
                "hub dataset (hub:OWNER/NAME)"
            )
        raise UserError(
            f"{path}: unsupported file type {path.suffix!r} (expected .jsonl, .csv, .tsv, .parquet or .arrow)"
        )
    return read_file(path, text_column, label_column, text_pair_column)


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """Texts of a .jsonl / .csv / .tsv file (its `text_column`), or of a plain text file (one per line)."""
    if path.suffix.lower() in SUFFIXES:
        return read_file(path, text_column, None).texts
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return [line.strip() for line in _decode(path).splitlines() if line.strip()]


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of every non-blank row of a .jsonl / .csv / .tsv file (csv / tsv: a header
    line first); a missing or empty file, bad JSON, a non-UTF-8 byte or a row of the wrong width is a
    UserError naming the file and line."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    text = _decode(path)
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path, text)
    return _delimited_rows(path, text, "\t" if path.suffix.lower() == ".tsv" else ",")


def read_file(path: Path, text_column: str, label_column: str | None, text_pair_column: str = "") -> Examples:
    """Rows of a jsonl / csv / tsv file; with `label_column=None` only texts are read (labels are ""), with
    `text_pair_column` each row's second text as well."""
    rows = read_rows(path)
    columns = [c for c in (text_column, text_pair_column, label_column) if c]
    texts, pairs, labels, lines, skipped = [], [], [], [], {}
    for line_no, row in rows:
        for column in columns:
            if column not in row:
                raise UserError(
                    f"{path}:{line_no}: no column {shown(column)} (columns: {cut(', '.join(map(str, row)))}); "
                    f"set it with --text-column / --label-column or data.text_column / data.label_column"
                    + (" / data.text_pair_column" if text_pair_column else "")
                )
        value, label = row[text_column], row[label_column] if label_column else None
        pair = row[text_pair_column] if text_pair_column else ""
        why = _why_skipped(value, pair if text_pair_column else NOT_READ, label if label_column else NOT_READ)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        texts.append(str(value).strip())
        pairs.append(str(pair).strip())
        labels.append(label_text(label, f"{path}:{line_no}: column {shown(label_column)}") if label_column else "")
        lines.append(line_no)
    if not texts:
        raise UserError(f"{path}: no usable rows ({_describe_skipped(skipped) or 'no data rows'})")
    return Examples(texts, labels, str(path), skipped, lines, pairs if text_pair_column else None)


def read_table(table: hub.Table, text_column: str, label_column: str, text_pair_column: str = "") -> Examples:
    """The examples of one split read through `datasets` (data/hub.py): a ClassLabel label column gives
    its class names (and their order; -1, "no label" as in GLUE's test splits, is skipped), any other
    label is read as a file's (`label_text`)."""
    values = hub.columns(table, [c for c in (text_column, text_pair_column, label_column) if c])
    names = hub.class_names(table, label_column)
    texts, pairs, labels, rows, skipped = [], [], [], [], {}
    for i, (value, label) in enumerate(zip(values[text_column], values[label_column], strict=True)):
        pair = values[text_pair_column][i] if text_pair_column else ""
        if names is not None and label is not None:
            label = names[label] if 0 <= label < len(names) else None  # -1: no label
        if isinstance(label, float) and math.isnan(label):
            label = None  # how pandas writes a missing value into a float column
        why = _why_skipped(value, pair if text_pair_column else NOT_READ, label)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        texts.append(str(value).strip())
        pairs.append(str(pair).strip())
        labels.append(label_text(label, f"{table.source}: row {i + 1}: column {shown(label_column)}"))
        rows.append(i + 1)
    if not texts:
        raise UserError(f"{table.source}: no usable rows ({_describe_skipped(skipped) or 'no data rows'})")
    return Examples(
        texts, labels, table.source, skipped, rows, pairs if text_pair_column else None, names, position="row"
    )


NOT_READ = object()  # a column not read (no text pair column, no label column): never a reason to skip


def _why_skipped(text, pair=NOT_READ, label=NOT_READ) -> str:
    """Why a row is skipped: "empty text", "empty text pair" or "empty label" (the first that is None or
    blank), or "" to keep it. `pair` and `label` are only checked when given."""
    if _blank(text):
        return "empty text"
    if pair is not NOT_READ and _blank(pair):
        return "empty text pair"
    if label is not NOT_READ and _blank(label):
        return "empty label"
    return ""


def _blank(value) -> bool:
    return value is None or str(value).strip() == ""


def label_text(value, where: str) -> str:
    """A label read from a file as a class name: strings as they are (stripped); a JSON number that is
    a whole number as that integer ("1" for 1 and 1.0); any other number, or a list or object, refused."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int):  # bools too: "True", "False"
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        raise UserError(
            f"{where}: label {shown(value)} is not a whole number; a number label names a class "
            "(1 and 1.0 are both class 1): write a fractional label as a string"
        )
    raise UserError(f"{where}: a label must be a string or a number, got a JSON {type(value).__name__}")


def _describe_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} skipped for {why}" for why, n in skipped.items())


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(
            f"{path}:{line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8; re-save the file as UTF-8"
        ) from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_refuse_constant, object_pairs_hook=_object_without_repeats)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise UserError(f"{path}:{line_no}: invalid JSON (nested too deeply)") from None
        except ValueError as e:  # ours below, or an integer past Python's 4,300-digit limit
            raise UserError(f"{path}:{line_no}: invalid JSON ({cut(str(e))})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: expected a JSON object per line, got {type(row).__name__}")
        rows.append((line_no, row))
    return rows


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        repeated = next(key for i, (key, _) in enumerate(pairs) if key in dict(pairs[:i]))
        raise ValueError(f"key {shown(repeated)} appears twice in one object")
    return row


def _delimited_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = []
    try:
        header = next(reader)
        repeated = [name for i, name in enumerate(header) if name in header[:i]]
        if repeated:
            raise UserError(f"{path}:{reader.line_num}: column {shown(repeated[0])} appears twice in the header")
        for row in reader:
            line_no = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise UserError(
                    f"{path}:{line_no}: {len(row)} fields but the header has {len(header)} ({cut(', '.join(header))})"
                )
            rows.append((line_no, dict(zip(header, row, strict=False))))
    except csv.Error as e:  # a field longer than csv's limit (131,072 characters), a stray quote
        raise UserError(f"{path}:{reader.line_num}: unreadable {path.suffix[1:]} row: {cut(str(e))}") from None
    if not rows:
        raise UserError(f"{path}: a header line but no data rows")
    return rows


# ---- labels -----------------------------------------------------------------------------------


def label_set(train: Examples, spec: str) -> list[str]:
    """Labels in a stable order: the builtin dataset's documented order, else sorted (numerically if all ints)."""
    order = builtin_label_order(spec)
    if order is None:
        order = train.label_order
    seen = set(train.labels)
    if order is not None:
        return [label for label in order if label in seen] + sorted(seen - set(order))
    _refuse_one_number_written_two_ways(train)
    if all(INTEGER.fullmatch(label) for label in seen):  # not str.isdigit: "²" is a digit that int() refuses
        return sorted(seen, key=int)
    return sorted(seen)


INTEGER = re.compile(r"-?[0-9]+")
NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _refuse_one_number_written_two_ways(examples: Examples) -> None:
    """ "1" and "1.0" (or "01") in one label column are one class the file wrote two ways: refused."""
    first: dict[float, tuple[str, int]] = {}  # number -> (label, index of its first example)
    for i, label in enumerate(examples.labels):
        if not NUMBER.fullmatch(label):
            continue
        other = first.setdefault(float(label), (label, i))
        if other[0] != label:
            where = [examples.where(j) for j in (other[1], i)]
            raise UserError(
                f"{examples.source}: labels {shown(other[0])} ({where[0]}) and {shown(label)} ({where[1]}) are one "
                "number written two ways; write each class the same way"
            )


def check_labels(examples: Examples, labels: list[str]) -> None:
    """Every label must be one the model was trained on."""
    known = set(labels)
    for i, label in enumerate(examples.labels):
        if label not in known:
            raise UserError(
                f"{examples.source}: {examples.where(i)} has label {shown(label)}, which training never saw "
                f"(known: {cut(', '.join(labels))})"
            )


@dataclass
class Task:
    """A classification task: training and evaluation examples and the label set (from training)."""

    train: Examples
    eval: Examples
    labels: list[str]


def load_task(
    train_spec: str,
    eval_spec: str,
    text_column: str,
    label_column: str,
    max_train: int = 0,
    max_eval: int = 0,
    text_pair_column: str = "",
    subset: str = "",
) -> Task:
    if subset and not any(spec.startswith(hub.HUB_PREFIX) for spec in (train_spec, eval_spec)):
        raise UserError(
            f"data.subset: {shown(subset)} names a subset of a hub dataset, but neither data.train nor data.eval "
            "is one (hub:OWNER/NAME); leave data.subset empty"
        )
    columns = (text_column, label_column)
    train = load_examples(train_spec, *columns, "train", text_pair_column, subset).head(max_train)
    eval_ = load_examples(eval_spec, *columns, "dev", text_pair_column, subset).head(max_eval)
    labels = label_set(train, train_spec)
    if len(labels) < 2:
        raise UserError(f"{train.source}: training data has only one label ({labels[0]!r}); need at least two")
    check_labels(eval_, labels)
    return Task(train, eval_, labels)


def manifest_entry(examples: Examples) -> dict:
    """What manifest.json records of one split: its source, size, skipped rows and a fingerprint."""
    from lmforge.core.rundir import fingerprint  # imports torch: only when a run starts

    texts = examples.texts
    if examples.text_pairs is not None:  # the pair in the fingerprint, each text ended by a unit separator
        texts = [f"{text}\x1f{pair}\x1f" for text, pair in zip(texts, examples.text_pairs, strict=True)]
    return {
        "source": examples.source,
        "examples": len(examples),
        "skipped": examples.skipped,
        "sha256_16": fingerprint(texts, examples.labels),
    }


def task_manifest(task: Task) -> dict:
    """manifest.json's "data" of a classification run: its training and evaluation splits."""
    return {"train": manifest_entry(task.train), "eval": manifest_entry(task.eval)}


def describe(examples: Examples) -> str:
    """'sst2:train: 6,920 examples' plus what was skipped and why."""
    line = f"{examples.source}: {len(examples):,} {'text pairs' if examples.text_pairs is not None else 'examples'}"
    if examples.skipped:
        line += f" ({_describe_skipped(examples.skipped)})"
    return line
