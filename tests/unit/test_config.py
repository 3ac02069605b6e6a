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
