import pytest

from lmforge.config import apply_overrides, build_config
from lmforge.errors import UserError
from lmforge.registry import option_classes

BASE = {"method": "lora", "model": {"name": "tiny-bert"}, "train": {"lr": "1e-3"}}


def build(raw, overrides=()):
    return build_config(apply_overrides(raw, list(overrides)), option_classes(), source="recipe.yaml")


def test_defaults_and_yaml_float_strings():
    cfg = build({**BASE})
    assert cfg.train.lr == 1e-3  # YAML reads "1e-3" as a string; it must still become a float
    assert cfg.options.r == 8 and cfg.options.target_modules == ["query", "value"]


def test_overrides_reach_nested_keys():
    cfg = build({**BASE}, ["train.batch_size=4", "lora.r=16", "lora.target_modules=query,key", "model.dropout=0"])
    assert cfg.train.batch_size == 4 and cfg.options.r == 16
    assert cfg.options.target_modules == ["query", "key"]
    assert cfg.model.dropout == 0.0


def test_round_trip_through_yaml():
    import yaml

    cfg = build({**BASE}, ["lora.alpha=32"])
    again = build(yaml.safe_load(cfg.to_yaml()))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-0.1", "train.lr: expected a value > 0"),
        ("train.batch_size=two", "train.batch_size: expected an integer"),
        ("train.batch_size=0", "train.batch_size: expected a value >= 1"),
        ("train.epoch=3", "unknown key 'train.epoch'"),
        ("lora.rank=4", "unknown key 'lora.rank'"),
        ("train.mixed_precision=fp8", "expected one of no, fp16, bf16"),
        ("training.lr=1", "unknown key 'training'"),
        ("noequals", "expected key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        build({**BASE}, [override])


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown method 'lorra' \(one of: .*finetune.*lora"):
        build({"method": "lorra"})


def test_section_of_another_method_is_rejected():
    with pytest.raises(UserError, match="unknown key 'lora'"):
        build({"method": "finetune", "lora": {"r": 4}})


def test_yaml_1_1_pitfalls_do_not_bite():
    # YAML 1.1 reads `no` as false and `1e-3` as a string; config values must mean what they say.
    cfg = build({**BASE}, ["train.mixed_precision=no", "train.weight_decay=1e-3"])
    assert cfg.train.mixed_precision == "no" and cfg.train.weight_decay == 1e-3


def test_nested_sections_validate_and_describe():
    from dataclasses import dataclass

    from lmforge.config import describe, option

    @dataclass
    class Inner:
        layers: int = option(3, "layers", min=1)

    @dataclass
    class DemoConfig:
        student: Inner = option(Inner(), "the student")
        name: str = option("x", "a name")

    classes = {"demo": DemoConfig}
    cfg = build_config(apply_overrides({"method": "demo"}, ["demo.student.layers=4"]), classes, "r.yaml")
    assert cfg.options.student.layers == 4 and DemoConfig().student.layers == 3
    assert cfg.to_dict()["demo"] == {"student": {"layers": 4}, "name": "x"}
    with pytest.raises(UserError, match="demo.student.layers: expected a value >= 1"):
        build_config(apply_overrides({"method": "demo"}, ["demo.student.layers=0"]), classes, "r.yaml")
    with pytest.raises(UserError, match="unknown key 'demo.student.depth'"):
        build_config(apply_overrides({"method": "demo"}, ["demo.student.depth=2"]), classes, "r.yaml")
    with pytest.raises(UserError, match="demo.student: expected a section of keys"):
        build_config(apply_overrides({"method": "demo"}, ["demo.student=3"]), classes, "r.yaml")
    assert [row[0] for row in describe(DemoConfig, "demo")] == ["demo.student.layers", "demo.name"]


# ---- issue 23 items 8, 10, 11: non-finite numbers, duplicate keys, alias bombs, echoed values -------


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=inf", "train.lr: expected a finite number"),
        ("train.lr=1e400", "train.lr: expected a finite number"),  # YAML reads it as float("inf")
        ("train.lr=nan", "train.lr: expected a finite number"),
        ("train.weight_decay=nan", "train.weight_decay: expected a finite number"),
        ("train.epochs=.inf", "train.epochs: expected a finite number"),
        ("train.warmup_ratio=-.inf", "train.warmup_ratio: expected a finite number"),
        ("model.dropout=.nan", "model.dropout: expected a finite number"),
        ("lora.alpha=" + "9" * 400, "lora.alpha: expected a finite number"),  # too big for a float
        ("train.seed=4294967296", "train.seed: expected a value <= 4294967295"),  # 2**32: numpy refuses it
        ("train.seed=-1", "train.seed: expected a value >= 0"),
        ("train.max_steps=9223372036854775808", "train.max_steps: expected an integer within"),  # 2**63
        ("lora.target_modules=" + "q," * 10, None),  # a list of strings is not a number: still fine
    ],
)
def test_numbers_must_be_finite_and_in_range(override, message):
    if message is None:
        build({**BASE}, [override])
        return
    with pytest.raises(UserError, match=message):
        build({**BASE}, [override])


def test_the_largest_seed_numpy_takes_is_accepted():
    import numpy as np

    cfg = build({**BASE}, ["train.seed=4294967295"])
    np.random.seed(cfg.train.seed)  # the range checked is numpy's own


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def read(path):
    from lmforge.config import read_yaml

    return read_yaml(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: lora\ntrain:\n  lr: 1e-3\n  lr: 2e-3\n", "line 4 invalid YAML: duplicate key 'lr'"),
        ("method: lora\nmethod: finetune\n", "line 2 invalid YAML: duplicate key 'method'"),
        ("method: lora\ntrain: {lr: 1e-3, lr: 1e-4}\n", "line 2 invalid YAML: duplicate key 'lr'"),
    ],
)
def test_a_key_given_twice_is_refused_not_resolved_to_the_last(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=f"{path}: {message}"):
        read(path)


BOMB = (
    "method: lora\na: &a ["
    + ",".join(['"lol"'] * 10)
    + "]\n"
    + "".join(f"{x}: &{x} [{','.join(['*' + p] * 10)}]\n" for p, x in zip("abcdefgh", "bcdefghi", strict=False))
)


def test_an_alias_bomb_is_refused_at_its_first_alias(tmp_path):
    assert len(BOMB) < 450  # expanded: 10**9 strings
    path = write(tmp_path, BOMB)
    with pytest.raises(UserError) as refused:
        read(path)
    assert str(refused.value) == f"{path}: line 3 invalid YAML: alias *a refused: write the value out"


def test_aliases_and_merge_keys_are_refused_even_when_small(tmp_path):
    path = write(tmp_path, "method: lora\nbase: &base {lr: 1e-3}\ntrain:\n  <<: *base\n")
    with pytest.raises(UserError, match="line 4 invalid YAML: alias \\*base refused"):
        read(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: lora\ntrain:\n  max_steps: " + "9" * 5000 + "\n", "invalid YAML: Exceeds the limit"),
        ("method: lora\nx: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),  # deeper than the parser goes
    ],
)
def test_yaml_that_breaks_the_parser_is_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as refused:
        read(path)
    assert len(str(refused.value)) < 400


def test_echoed_values_are_cut_to_a_short_line():
    huge = "x" * 1_000_000
    with pytest.raises(UserError) as refused:
        build({**BASE, "train": {"lr": 1e-3, "batch_size": huge}})
    message = str(refused.value)
    assert message.startswith("recipe.yaml: train.batch_size: expected an integer, got 'xxx")
    assert len(message) < 300 and "..." in message
    nested = [[list(range(1000))] * 1000] * 1000  # a billion items when printed whole
    with pytest.raises(UserError) as refused:
        build({**BASE, "train": {"lr": nested}})
    assert len(str(refused.value)) < 300


def test_an_integer_override_too_long_for_python_is_an_echoed_string():
    with pytest.raises(UserError, match=r"train.max_steps: expected an integer, got '9999.*\.\.\.") as refused:
        build({**BASE}, ["train.max_steps=" + "9" * 5000])
    assert len(str(refused.value)) < 400


@pytest.mark.parametrize(
    "kwargs, text, message",
    [
        ({}, "nan", "expected a finite number, got 'nan'"),
        ({}, "-inf", "expected a finite number"),
        ({}, "1e400", "expected a finite number"),
        ({"min": 0.0}, "-0.5", "expected a value >= 0.0"),
        ({"above": 0.0, "max": 1.0}, "0", "expected a value > 0.0"),
        ({"above": 0.0, "max": 1.0}, "1.5", "expected a value <= 1.0"),
        ({"kind": int, "min": 1}, "0", "expected a value >= 1"),
        ({"kind": int}, "1.5", "expected an integer, got '1.5'"),
    ],
)
def test_cli_number_refuses_non_finite_and_out_of_range_flags(kwargs, text, message):
    import argparse

    from lmforge.config import cli_number

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        cli_number(**kwargs)(text)
    assert cli_number(**kwargs)("1") == 1
