"""`model.dtype=bfloat16`: what it changes in a run of the kernel (start_training casts the model once): every
weight and the optimizer's state are bfloat16, half the bytes of float32; a repeated batch still trains; final/
holds bfloat16 weights that reload as bfloat16 and score what final.json says; fp16 mixed precision is refused.
The default (float32) leaves the model as loaded: tests/recipes/test_baselines.py checks its numbers."""

import json

import pytest
import torch
from kernel_runs import MANIFEST_DATA, config, made_up_data, records, train
from safetensors import safe_open

from lmforge.core.training_run import start_training
from lmforge.data.classify import evaluate
from lmforge.errors import UserError
from lmforge.models.classifier import load_classifier, load_saved_classifier


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in float32 and in bfloat16: 8 steps over the same 8 examples (one batch an epoch), dropout off."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root, out = tmp_path_factory.mktemp("dtype"), {}
    for dtype in ("float32", "bfloat16"):
        cfg = config({"dtype": dtype}, max_steps=8, eval_every=8, save_every=8, warmup_ratio=0.0)
        out[dtype] = (root / dtype, *train(cfg, root / dtype, n_train=8))
    torch.set_num_threads(torch_threads)
    return out


@pytest.fixture(scope="module")
def bfloat16_run(runs):
    return runs["bfloat16"]


def test_weights_and_optimizer_state_are_bfloat16_at_half_the_bytes(bfloat16_run):
    _, t, _ = bfloat16_run
    model = t.unwrapped
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    states = [s for s in t.optimizer.state.values() if "exp_avg" in s]
    assert states and {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")} == {torch.bfloat16}
    as_loaded, _ = load_classifier("tiny-bert", ["even", "odd"], 42, 0.0)
    assert {p.dtype for p in as_loaded.parameters()} == {torch.float32}
    assert parameter_bytes(model) * 2 == parameter_bytes(as_loaded)


def test_a_repeated_batch_trains_in_bfloat16_along_the_float32_losses(runs):
    losses = {dtype: [r["loss"] for r in records(run_dir)] for dtype, (run_dir, _, _) in runs.items()}
    bf16 = losses["bfloat16"]
    assert len(bf16) == 8 and all(torch.isfinite(torch.tensor(bf16)))
    assert all(later < earlier for earlier, later in zip(bf16, bf16[1:], strict=False)), bf16
    assert bf16 != losses["float32"]  # another computation ...
    assert bf16 == pytest.approx(losses["float32"], abs=0.005)  # ... along the same path (0.692 -> 0.614 here)


def test_final_weights_are_saved_in_bfloat16_and_reload_to_the_same_scores(bfloat16_run):
    run_dir, _, final = bfloat16_run
    with safe_open(str(run_dir / "final" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    assert json.loads((run_dir / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    model, _ = load_saved_classifier(run_dir / "final")
    assert model.dtype == torch.bfloat16
    data = made_up_data(8)
    again = evaluate(model, data.eval_ids, data.eval_labels, 2, 0, 16, "cpu", desc=None)
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-6) and again["accuracy"] == final["accuracy"]


def test_bfloat16_weights_with_fp16_mixed_precision_are_refused_before_anything_is_written(tmp_path):
    model, tokenizer = load_classifier("tiny-bert", ["even", "odd"], 0, 0.0)
    cfg = config({"dtype": "bfloat16"}, mixed_precision="fp16")
    with pytest.raises(UserError, match="model.dtype=bfloat16 with train.mixed_precision=fp16: .* use train.mixed"):
        start_training(cfg, tmp_path / "run", False, model, tokenizer, [5] * 8, MANIFEST_DATA)
    assert not (tmp_path / "run").exists()
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # refused before the cast


def test_fp16_mixed_precision_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    # Accelerate would run it in float32 without saying so (fp16 autocast is off on a CPU)
    model, tokenizer = load_classifier("tiny-bert", ["even", "odd"], 0, 0.0)
    cfg = config({}, mixed_precision="fp16")
    with pytest.raises(UserError, match="train.mixed_precision: fp16 does not run on a CPU"):
        start_training(cfg, tmp_path / "run", False, model, tokenizer, [5] * 8, MANIFEST_DATA)
    assert not (tmp_path / "run").exists()
