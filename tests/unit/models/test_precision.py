"""models/precision.py and the dtype of causal LMs: what `auto` picks, and bfloat16 weights end to end."""

import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.core.hardware import cpu_support
from lmforge.errors import UserError
from lmforge.generation.generate import HFGenerator, make_generator
from lmforge.generation.sampling import SamplingParams
from lmforge.models.causal_lm import load_causal_lm
from lmforge.models.precision import resolve_dtype


def test_explicit_dtypes_are_kept_and_auto_follows_the_cpu():
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    expected = "bfloat16" if cpu_support().fast_bfloat16 else "float32"
    assert resolve_dtype("auto") == expected


def test_an_unknown_dtype_is_refused_with_the_choices():
    with pytest.raises(UserError, match="dtype 'fp16': expected one of float32, bfloat16, auto"):
        resolve_dtype("fp16")
    with pytest.raises(UserError, match="dtype 'auto': expected one of float32, bfloat16"):
        load_causal_lm("tiny-gpt2", dtype="auto")  # the loader takes a resolved name only


def test_bfloat16_weights_hold_the_same_model_rounded():
    full, tokenizer = load_causal_lm("tiny-gpt2", seed=3)
    half, _ = load_causal_lm("tiny-gpt2", seed=3, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    ids = tokenizer(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a, b = full(ids).logits, half(ids).logits.float()
    # bfloat16 keeps 8 bits of mantissa: logits agree to about 1% of their spread, not to float32's bits
    assert (a - b).abs().max() < 0.02 * (a.max() - a.min())
    assert not torch.equal(a, b)


def test_a_bfloat16_generator_decodes_and_says_its_dtype():
    generator = make_generator("hf", "tiny-gpt2", batch_size=2, dtype="bfloat16")
    assert isinstance(generator, HFGenerator) and generator.dtype == "bfloat16"
    completions = generator.generate(["one two", "three four five"], SamplingParams(max_new_tokens=5))
    assert [len(c) for c in completions] == [1, 1] and all(c[0].tokens >= 1 for c in completions)


def test_eval_gen_records_the_dtype(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval-gen", "tiny-gpt2", "--task", "gsm8k", "--shots", "0", "--limit", "1", "--max-new-tokens", "4"]
    assert main([*args, "--dtype", "bfloat16", "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["parameters"]["dtype"] == "bfloat16"
    assert main([*args, "--dtype", "half", "--out", str(tmp_path / "bad")]) != 0
    assert "invalid choice: 'half'" in capsys.readouterr().err


def test_the_manifest_records_the_cpus_bfloat16_units():
    from dataclasses import asdict

    from lmforge.core.rundir import build_manifest

    hardware = build_manifest(0, {})["hardware"]
    assert hardware["cpu_bfloat16"] == asdict(cpu_support())
    assert set(hardware["cpu_bfloat16"]) == {"avx512_bf16", "amx"}


def test_greedy_choice_is_argmax_and_takes_the_first_of_a_tie():
    from lmforge.generation.generate import greedy_choice

    tied = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 1.0, 1.0]]).bfloat16()
    assert greedy_choice(tied).tolist() == [1, 0]
    logits = torch.randn(64, 5000, generator=torch.Generator().manual_seed(0)).bfloat16()  # many ties in 8 bits
    assert torch.equal(greedy_choice(logits), logits.float().argmax(-1))
    assert torch.equal(greedy_choice(logits.float()), logits.float().argmax(-1))
