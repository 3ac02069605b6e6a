"""Run configuration: YAML -> nested dataclasses, `key.sub=value` overrides, strict validation.

Every recipe is driven by the same top-level keys (`method`, `model.*`, `data.*`, `train.*`);
a method's own options live in a section named after the method (`lora.r`, ...), described by
the `<Method>Config` dataclass that the registry names. Each field carries its help text, and
optionally `min`, `max` or `choices`, in its metadata; those drive both validation and `--help`.
A number must be finite (`inf` and `nan` pass comparisons such as `min=0`) and an integer fit in 64
bits; YAML aliases and duplicate keys are refused (an alias bomb expands a few hundred bytes into
gigabytes, and a duplicate key silently keeps only its last value).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import UserError, shown

SEED_RANGE = {"min": 0, "max": 2**32 - 1}  # numpy's seed range (torch takes 64 bits)
INT_LIMIT = 2**63 - 1  # every integer option fits torch's int64


def option(default: Any, help: str, **checks: Any) -> Any:
    """A config field with help text and optional checks (min, max, choices). A dataclass default
    makes a nested section (`tinybert.student.layers`)."""
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **checks})
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **checks})
    return field(default=default, metadata={"help": help, **checks})


@dataclass
class ModelConfig:
    name: str = option("minilm", "builtin model name (see `lmforge list models`), a local folder, or a hub id")
    max_length: int = option(128, "truncate inputs to this many tokens", min=8, max=4096)
    dropout: float | None = option(
        None, "override the model's dropout rates (null = the model's own)", min=0.0, max=0.9
    )
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass instead of keeping them: less memory, more time"
    )
    dtype: str = option(
        "float32",
        "weights' dtype while training: float32, or bfloat16 (half the memory; pure bfloat16 weights, "
        "unlike train.mixed_precision, which keeps float32 weights and computes in half precision)",
        choices=["float32", "bfloat16"],
    )


@dataclass
class DataConfig:
    train: str = option(
        "sst2:train",
        "training data: a builtin split (`sst2:train`), a .jsonl/.csv/.tsv/.parquet/.arrow file, a "
        "Dataset.save_to_disk folder (`FOLDER:SPLIT`) or a hub dataset (`hub:OWNER/NAME:SPLIT`); a split left "
        "out is `train` (see docs/data.md)",
    )
    eval: str = option(
        "sst2:dev",
        "evaluation data, named as data.train; a split left out is `dev` for builtins, `validation` for "
        "folders and hub datasets",
    )
    subset: str = option(
        "", "subset (configuration) of a hub dataset, e.g. `mrpc` of `hub:nyu-mll/glue` (empty = its only one)"
    )
    text_column: str = option("text", "column holding the input text in user files")
    text_pair_column: str = option(
        "",
        "column holding the second text of a text pair (NLI, paraphrase): both texts reach the tokenizer as "
        "one pair, `[CLS] text [SEP] pair [SEP]` (empty = single texts)",
    )
    label_column: str = option("label", "column holding the label in user files")
    max_train_examples: int = option(0, "use only the first N training examples (0 = all)", min=0)
    max_eval_examples: int = option(0, "use only the first N evaluation examples (0 = all)", min=0)


@dataclass
class TrainConfig:
    epochs: float = option(3.0, "passes over the training data (ignored when max_steps > 0)", min=0.0)
    max_steps: int = option(0, "optimizer steps to run; 0 = derive from epochs", min=0)
    batch_size: int = option(32, "examples per micro-batch", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    group_by_length: bool = option(True, "batch examples of similar length together (less padding, faster)")
    lr: float = option(5e-5, "peak learning rate", min=0.0, exclusive_min=True)
    optimizer: str = option(
        "adamw", "adamw, adafactor (factored second moments: less memory) or sgd (momentum 0.9)",
        choices=["adamw", "adafactor", "sgd"],
    )  # fmt: skip
    weight_decay: float = option(0.01, "AdamW weight decay (never applied to biases and norms)", min=0.0)
    warmup_ratio: float = option(0.06, "share of steps with linear warmup, then the schedule", min=0.0, max=1.0)
    scheduler: str = option(
        "linear", "learning rate after the warmup: linear (decay to 0), cosine (to 0) or constant",
        choices=["linear", "cosine", "constant"],
    )  # fmt: skip
    max_grad_norm: float = option(1.0, "clip the gradient norm (0 = no clipping)", min=0.0)
    seed: int = option(42, "seed for weights, data order and dropout", **SEED_RANGE)
    eval_every: int = option(0, "evaluate every N optimizer steps (0 = once per epoch)", min=0)
    save_every: int = option(0, "checkpoint every N optimizer steps (0 = once per epoch)", min=0)
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep", min=1)
    metric: str = option(
        "accuracy",
        "metric for early stopping and the best model",
        choices=["accuracy", "macro_f1", "balanced_accuracy"],
    )
    early_stopping_patience: int = option(0, "stop after N evaluations without improvement (0 = off)", min=0)
    mixed_precision: str = option(
        "no",
        "Accelerate mixed precision (autocast): bf16 on a CPU or GPU, fp16 on a GPU only",
        choices=["no", "fp16", "bf16"],
    )
    log_every: int = option(10, "write the training loss to metrics.jsonl every N steps", min=1)
    report_to: list[str] = option(
        [],
        "experiment trackers that also receive the logged metrics, through Accelerate: tensorboard, mlflow, "
        "wandb (a list; empty = none; the run folder is written the same either way)",
    )
    eval_batch_size: int = option(64, "examples per evaluation batch", min=1)


@dataclass
class RunConfig:
    """The whole run. `options` holds the method's own section (e.g. LoraConfig)."""

    method: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    options: Any = None
    recipe: str | None = None  # the recipe the command line named ("lora/minilm_sst2"); manifest.json keeps it

    def to_dict(self) -> dict:
        out = {
            "method": self.method,
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }
        if self.options is not None:
            out[self.method] = dataclasses.asdict(self.options)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


class ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 scalars: only true/false are booleans (so `mixed_precision: no` stays
    the string "no"), and `1e-3` is a float (YAML 1.1 wants `1.0e-3`). Aliases (`*name`, and so
    `<<` merges) are refused: 382 bytes of nested aliases expand to millions of nodes. A key given
    twice in one mapping is refused rather than resolved to its last value."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.get_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{shown(event.anchor, 40)[1:-1]} refused: write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key, 60)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=ConfigLoader)


# What a crafted YAML text raises besides YAMLError: an integer past Python's 4,300-digit limit
# (ValueError), nesting deeper than the parser's recursion (RecursionError).
YAML_FAULTS = (yaml.YAMLError, ValueError, RecursionError)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        loaded = load_yaml(text)
    except YAML_FAULTS as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e) or type(e).__name__
        raise UserError(f"{path}:{where} invalid YAML: {shown(problem)[1:-1]}") from None
    if loaded is None:
        raise UserError(f"{path}: the recipe is empty")
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys, got {type(loaded).__name__}")
    return loaded


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings onto a copy of a nested dict (values parsed as YAML scalars)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {shown(item)}: expected key=value, e.g. train.lr=3e-4")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {shown(item)}: {shown(part)} is not a section")
            node = child
        try:
            node[parts[-1]] = load_yaml(value) if value != "" else ""
        except YAML_FAULTS:
            node[parts[-1]] = value
    return raw


def build_config(
    raw: dict, option_classes: dict[str, type], source: str = "config", overrides: list[str] | None = None
) -> RunConfig:
    """Validate a nested dict into a RunConfig. `option_classes` maps method name -> options class.

    `overrides` are the `key=value` strings already applied onto `raw`: an error about a key one of
    them set is blamed on the command line (naming the override), any other on `source` (the file)."""
    where = _Origin(source, overrides or [])
    raw = dict(raw)
    method = raw.pop("method", None)
    if method is None:
        raise UserError(f"{source}: missing key 'method' (one of: {', '.join(sorted(option_classes))})")
    if method not in option_classes:
        raise UserError(
            f"{where('method')}: method: unknown method {shown(method)} (one of: {', '.join(sorted(option_classes))})"
        )
    sections = dict(SECTIONS)
    sections[method] = option_classes[method]
    built = {}
    for key, value in raw.items():
        if key not in sections:
            raise UserError(f"{where(key)}: unknown key {shown(key)} (allowed: method, {', '.join(sections)})")
        if not isinstance(value, dict):
            raise UserError(f"{where(key)}: {key}: expected a section of keys, got {shown(value)}")
        built[key] = _build_section(sections[key], value, key, where)
    options_cls = option_classes[method]
    return RunConfig(
        method=method,
        model=built.get("model", ModelConfig()),
        data=built.get("data", DataConfig()),
        train=built.get("train", TrainConfig()),
        options=built.get(method, options_cls()),
    )


class _Origin:
    """Where a key's value came from, for error messages: the last command-line override that set it
    (or a key below it), else the recipe file."""

    def __init__(self, source: str, overrides: list[str]):
        self.source = source
        self.overrides = overrides

    def __call__(self, name: str) -> str:
        for item in reversed(self.overrides):  # the last override of a key is the one that holds
            key = item.partition("=")[0]
            if key == name or key.startswith(name + "."):
                return f"command line (override {shown(item)})"
        return self.source


def _build_section(cls: type, values: dict, prefix: str, where: _Origin) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if key not in fields:
            raise UserError(f"{where(name)}: unknown key {shown(name)} (allowed under {prefix!r}: {', '.join(fields)})")
        kwargs[key] = _check_value(name, value, hints[key], fields[key].metadata, where)
    return cls(**kwargs)


def _check_value(name: str, value: Any, hint: Any, meta: typing.Mapping, where: _Origin) -> Any:
    def fail(expected: str) -> typing.NoReturn:
        raise UserError(f"{where(name)}: {name}: expected {expected}, got {shown(value)}")

    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            fail("a section of keys")
        return _build_section(hint, value, name, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = args[0]
        origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        if abs(value) > INT_LIMIT:
            fail(f"an integer within +-{INT_LIMIT}")
    elif hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        try:
            value = float(value)
        except OverflowError:  # an integer of hundreds of digits
            fail("a finite number")
        if not math.isfinite(value):  # inf and nan pass every `min` / `max` comparison below
            fail("a finite number")
    elif hint is str:
        if not isinstance(value, str):
            fail("a string")
    elif origin is list and typing.get_args(hint) == (int,):
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                fail("a list of integers")
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            fail("a list of integers")
        if any(abs(v) > INT_LIMIT for v in value):
            fail(f"integers within +-{INT_LIMIT}")
    elif origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail("a list of strings")
    if "choices" in meta and value not in meta["choices"]:
        fail(f"one of {', '.join(map(str, meta['choices']))}")
    if "min" in meta and value is not None:
        if meta.get("exclusive_min") and value <= meta["min"]:
            fail(f"a value > {meta['min']}")
        if value < meta["min"]:
            fail(f"a value >= {meta['min']}")
    if "max" in meta and value is not None:
        if meta.get("exclusive_max") and value >= meta["max"]:
            fail(f"a value < {meta['max']}")
        if value > meta["max"]:
            fail(f"a value <= {meta['max']}")
    return value


def cli_number(kind: type = float, min: float | None = None, max: float | None = None, above: float | None = None):
    """An argparse `type=` for a number flag: finite (`nan` and `inf` pass comparisons), and within
    [min, max] or above `above`; a bad value is argparse's usage error naming the flag (exit 2)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {shown(text)}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {shown(text)}")
        if min is not None and value < min:
            raise argparse.ArgumentTypeError(f"expected a value >= {min}, got {shown(text)}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"expected a value > {above}, got {shown(text)}")
        if max is not None and value > max:
            raise argparse.ArgumentTypeError(f"expected a value <= {max}, got {shown(text)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def describe(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """(key, default, help) rows for `--help` and `lmforge list methods`."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), f"{prefix}.{f.name}")
        else:
            rows.append((f"{prefix}.{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
