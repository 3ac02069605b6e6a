"""Several processes under `accelerate launch` train the same model as one process, and the shipped Accelerate
config files (configs/accelerate/, docs/distributed.md) load as Accelerate reads them.

DDP on the CPU (gloo), launched with configs/accelerate/ddp.yaml: for every method that trains under
`accelerate launch`, two processes log the same loss at every step, the same evaluations and final metrics, and
save the same final weights as one process. The runs use SGD and two micro-batches per step: AdamW's update
hardly depends on the gradient's scale, so a gradient off by the number of processes would pass under it, and the
accumulation exercises DDP's `no_sync`. Dropout is off, since each process draws its own dropout masks.

Without a GPU, Accelerate forms a process group only with ACCELERATE_USE_CPU=true: without it each process of
`accelerate launch --multi_gpu` (or of ddp.yaml) runs alone as "process 0 of 1", and with `--cpu` the launcher
starts a single process whatever --num_processes says (accelerate 1.16). The tests set it.

`make test` runs two methods (full fine-tuning of a classifier; SFT of a causal LM with LoRA and a token-level
loss) and the in-process checks of the refusals and the DeepSpeed settings; `make test-distributed`
(LMFORGE_TEST_DISTRIBUTED=1) runs the rest: the other methods, the launched refusals, the parent-run methods
(CReST, continual, continual_lm: every child run, stage output and final number), V-STaR (its stages and its
verifier), and FSDP on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT

from lmforge.cli.main import main

CONFIGS = ROOT / "configs" / "accelerate"
EVERY_METHOD = os.environ.get("LMFORGE_TEST_DISTRIBUTED") == "1"
only_in_test_distributed = pytest.mark.skipif(
    not EVERY_METHOD, reason="`make test-distributed` runs it (LMFORGE_TEST_DISTRIBUTED=1)"
)

STEPS = ["train.max_steps=4", "train.batch_size=4", "train.grad_accum=2", "train.log_every=1", "model.dropout=0"]
SGD = ["train.optimizer=sgd", "train.lr=0.5", "train.max_grad_norm=100"]  # clipping runs but never binds
CLASSIFIER = ["model.name=tiny-bert", "data.max_train_examples=32", "data.max_eval_examples=16", *STEPS, *SGD]
GPT2_LORA = ["sft.lora_dropout=0", "sft.target_modules=[c_attn,c_proj,c_fc]"]
CASES = {
    "finetune": ["finetune/minilm_sst2", *CLASSIFIER],
    "sft": ["sft/gemma_gsm8k", "model.name=tiny-gpt2", "model.max_length=512", "data.max_train_examples=32",
            "sft.dev_size=8", "train.eval_every=4", *STEPS, *SGD, *GPT2_LORA],
    "lora": ["lora/minilm_sst2", *CLASSIFIER, "lora.dropout=0"],
    "adalora": ["adalora/minilm_sst2", *CLASSIFIER, "adalora.lora_dropout=0", "adalora.init_r=3",  # ranks pruned
                "adalora.target_r=1", "adalora.tinit=1", "adalora.tfinal=1", "adalora.deltaT=1"],  # at steps 1 and 2
    "kbert": ["kbert/minilm_sst2", *CLASSIFIER, "model.max_length=64"],
}  # fmt: skip
EVERYDAY = ("finetune", "sft")
# Methods made of a parent run folder with stages and child runs: the main process writes the parent's folder and
# stages (predictions, scores, pairs), the others wait and read them; every child run trains on both processes.
PARENT_RUNS = {
    "crest": ["crest/minilm_trec6", "model.name=tiny-bert", "model.max_length=32", "data.max_train_examples=900",
              "data.max_eval_examples=16", "crest.generations=2", "crest.threshold=0.0", "train.eval_every=4", *STEPS],
    "continual": ["continual/minilm_stream", "model.name=tiny-bert", "model.max_length=32",
                  "data.max_train_examples=16", "data.max_eval_examples=16", "continual.tasks=sst2,trec6",
                  "train.epochs=1", "train.batch_size=4", "train.grad_accum=2", "train.log_every=1", "model.dropout=0"],
    "continual_lm": ["continual_lm/gemma_gsm8k_mbpp", "model.name=tiny-gpt2", "model.max_length=512",
                     "data.max_train_examples=8", "continual_lm.held_out=4", "train.eval_every=4", *STEPS],
}  # fmt: skip


def launch(
    config: str,
    *args: str,
    options: tuple = (),
    script: Path | None = None,
    env: dict | None = None,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/CONFIG OPTIONS -m lmforge ARGS` with two processes on the
    CPU (`script ARGS` in place of `-m lmforge` when given); `env` adds to or replaces the environment's variables."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *options]
    command += ["--num_processes", "2", "--main_process_port", "0"]  # a free port: runs side by side never clash
    command += [str(script)] if script else ["-m", "lmforge"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    # Its own process group: on a timeout the launcher and its workers (waiting in a collective, where a SIGTERM
    # only sets lmforge's stop flag) are all killed, not left behind.
    with subprocess.Popen(
        [*command, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def one_process(args: list[str], run_dir: Path) -> None:
    assert main(["run", *args, "--run-dir", str(run_dir)]) == 0


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(ddp: Path, single: Path, steps: int, finished: bool = True) -> None:
    """Same metrics.jsonl (every step's loss, every evaluation) and, with `finished`, the same final.json metrics
    and final weights (every safetensors file of final/)."""
    logged, expected = records(ddp), records(single)
    assert len([r for r in logged if r["split"] == "train"]) == steps, "one process (the main one) writes metrics"
    assert [(r["split"], r["step"]) for r in logged] == [(r["split"], r["step"]) for r in expected]
    for got, want in zip(logged, expected):
        numbers = {k: v for k, v in want.items() if isinstance(v, float)}
        assert {k: got[k] for k in numbers} == pytest.approx(numbers, rel=1e-4, abs=1e-6), (got, want)
    if not finished:
        return
    final = {r: json.loads((r / "final.json").read_text())["metrics"] for r in (single, ddp)}
    assert final[ddp] == pytest.approx(final[single], rel=1e-4, abs=1e-6)
    from safetensors.torch import load_file

    weights = sorted(p.relative_to(single) for p in (single / "final").rglob("*.safetensors"))
    assert weights, "final/ holds the trained weights"
    for name in weights:
        got, want = load_file(ddp / name), load_file(single / name)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", [m if m in EVERYDAY else pytest.param(m, marks=only_in_test_distributed) for m in CASES]
)
def test_two_processes_train_as_one(method, tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = launch("ddp.yaml", "run", *CASES[method], "--run-dir", str(ddp))
    assert result.returncode == 0, result.stderr[-3000:]
    one_process(CASES[method], single)
    assert_same_training(ddp, single, steps=4)


TIMINGS = {"seconds", "examples_per_second", "train_seconds", "task_train_seconds"}  # differ from run to run


def assert_same_numbers(got, want, where: str) -> None:
    """The same JSON value, numbers within the tests' tolerance, timings left out."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want.keys() - TIMINGS:
            assert_same_numbers(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), where
    else:
        assert got == want, where


@pytest.mark.slow
@only_in_test_distributed
@pytest.mark.parametrize("method", list(PARENT_RUNS))
def test_parent_run_methods_train_as_one(method, tmp_path):
    """Every child run trains as one process (losses, evaluations, final weights), every stage the parent wrote
    (CReST's pseudo-labels, continual's score rows, continual_lm's pairs and loss rows) and its final.json (the
    matrices, the final metrics) hold the same values, and the parent's folder is complete."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = launch("ddp.yaml", "run", *PARENT_RUNS[method], "--run-dir", str(ddp))
    assert result.returncode == 0, result.stderr[-3000:]
    one_process(PARENT_RUNS[method], single)
    children = sorted(p.parent.name for p in (single / "stages").glob("*/final.json"))
    assert len(children) >= 2 and children == sorted(p.parent.name for p in (ddp / "stages").glob("*/final.json"))
    for child in children:
        steps = len([r for r in records(single / "stages" / child) if r["split"] == "train"])
        assert_same_training(ddp / "stages" / child, single / "stages" / child, steps=steps)
    outputs = sorted(p.name for p in (single / "stages").iterdir() if p.is_file())
    assert outputs and outputs == sorted(p.name for p in (ddp / "stages").iterdir() if p.is_file())
    for name in outputs:
        if name.endswith(".json"):
            got, want = (json.loads((run / "stages" / name).read_text()) for run in (ddp, single))
            assert_same_numbers(got, want, name)
        elif name.endswith(".jsonl"):
            assert (ddp / "stages" / name).read_text() == (single / "stages" / name).read_text(), name
    assert_same_numbers(*(json.loads((run / "final.json").read_text()) for run in (ddp, single)), "final.json")
    assert {p.name for p in ddp.iterdir()} == {p.name for p in single.iterdir()}  # config, manifest, final/, report


@pytest.mark.slow
@only_in_test_distributed
def test_processes_that_would_each_run_alone_are_refused(tmp_path):
    # Without ACCELERATE_USE_CPU on a machine with no GPU, each launched process is "process 0 of 1".
    folder = tmp_path / "alone"
    result = launch("ddp.yaml", "run", *CASES["finetune"], "--run-dir", str(folder), env={"ACCELERATE_USE_CPU": None})
    assert result.returncode != 0
    assert "WORLD_SIZE=2 but Accelerate sees one process" in result.stderr, result.stderr[-3000:]
    assert "set ACCELERATE_USE_CPU=true" in result.stderr
    assert not folder.exists(), "refused before anything was written"


def test_a_process_without_examples_of_a_micro_batch_runs_a_stand_in():
    """The last step of an epoch here holds one example: process 1 gets it as a stand-in (weighed 0 by
    `accumulate`), so that both run one forward and backward pass."""
    import itertools

    from lmforge.config import TrainConfig
    from lmforge.core.loop import TrainState, optimizer_batches

    train = TrainConfig(batch_size=4, grad_accum=2, seed=1, group_by_length=False)
    steps = [list(itertools.islice(optimizer_batches([5] * 9, train, TrainState(), r, 2), 2)) for r in (0, 1)]
    full = [ranks[0] for ranks in zip(*steps) if ranks[0].size == 8][0]
    assert full.stand_ins == [False, False] and len(full.micro_batches) == 2
    last = [ranks for ranks in zip(*steps) if ranks[0].size == 1][0]
    assert last[0].micro_batches == last[1].micro_batches == [last[0].examples]
    assert (last[0].stand_ins, last[1].stand_ins) == ([False], [True])


def test_a_launch_accelerate_sees_as_one_process_is_refused(monkeypatch, tmp_path):
    from lmforge.config import TrainConfig
    from lmforge.core.loop import make_accelerator
    from lmforge.core.rundir import open_parent_run
    from lmforge.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun tells each process; this process is alone
    with pytest.raises(UserError, match="WORLD_SIZE=2 but Accelerate sees one process.*ACCELERATE_USE_CPU=true"):
        make_accelerator(TrainConfig())
    with pytest.raises(UserError, match="WORLD_SIZE=2"):
        open_parent_run(tmp_path / "never-made", "", 0, {}, resume=False)
    assert not (tmp_path / "never-made").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    make_accelerator(TrainConfig())


def test_deepspeed_refuses_gradient_accumulation(monkeypatch):
    from lmforge.config import TrainConfig
    from lmforge.core.loop import make_accelerator
    from lmforge.core.processes import check_deepspeed_launch
    from lmforge.errors import UserError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # as `accelerate launch` sets it for a DeepSpeed config
    with pytest.raises(UserError, match="train.grad_accum=2: under DeepSpeed every micro-batch"):
        make_accelerator(TrainConfig(grad_accum=2))  # before the Accelerator (and DeepSpeed) is made
    check_deepspeed_launch(TrainConfig(grad_accum=1))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    check_deepspeed_launch(TrainConfig(grad_accum=2))


def test_deepspeed_micro_batch_comes_from_train_batch_size():
    from accelerate.utils import DeepSpeedPlugin

    from lmforge.core.processes import fill_deepspeed_config
    from lmforge.errors import UserError

    # A config from the Accelerate YAML alone (`zero_stage: 3`, no JSON file): "auto" everywhere
    plugin = DeepSpeedPlugin(zero_stage=3)
    assert plugin.is_auto("train_micro_batch_size_per_gpu")
    fill_deepspeed_config(plugin, batch_size=5, num_processes=2)
    assert plugin.get_value("train_micro_batch_size_per_gpu") == 3  # every 2nd example of 5: at most 3
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    explicit = DeepSpeedPlugin(hf_ds_config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}})
    fill_deepspeed_config(explicit, batch_size=8, num_processes=2)
    assert explicit.get_value("train_micro_batch_size_per_gpu") == 1  # the file's own value stays
    accumulating = DeepSpeedPlugin(hf_ds_config={"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 2}})
    with pytest.raises(UserError, match="gradient_accumulation_steps=4"):
        fill_deepspeed_config(accumulating, batch_size=8, num_processes=2)


@pytest.mark.slow
@only_in_test_distributed
def test_tinybert_refuses_several_processes(tmp_path):
    # Its attention-score projections and the teacher live outside DDP's forward (methods/tinybert/recipe.py).
    result = launch(
        "ddp.yaml", "run", "tinybert/minilm_sst2", "model.name=tiny-bert", "--run-dir", str(tmp_path / "tb")
    )
    assert result.returncode != 0
    assert "tinybert runs in one process" in result.stderr
    assert not (tmp_path / "tb").exists(), "refused before anything was written"


# V-STaR under two processes: the generator (the sft recipe) trains on both, process 0 samples and scores while the
# other waits, the verifier trains on both. The DPO verifier sets the run's seed right before its LoRA is made and
# applies model.dropout (methods/vstar/verifier.py), so it starts from the weights one process starts from.
VSTAR = ["vstar/gemma_gsm8k", "model.max_length=1024", "data.max_train_examples=4", "train.max_steps=2",
         "train.batch_size=4", "train.grad_accum=1", "train.eval_batch_size=8", "train.log_every=1",
         "vstar.iterations=1", "vstar.samples_per_problem=2", "vstar.max_new_tokens=16", "vstar.test_problems=2",
         "vstar.test_samples=2", "vstar.ks=[1,2]", "vstar.target_modules=[c_attn,c_proj,c_fc]", "vstar.lora_dropout=0",
         "vstar.verifier.batch_size=2", "vstar.verifier.grad_accum=1", "vstar.orm.enabled=false"]  # fmt: skip


@pytest.fixture(scope="module")
def vstar_runs(tmp_path_factory):
    """(two processes, one process) V-STaR runs from a tiny GPT-2 with every dropout rate 0."""
    from lmforge.models.causal_lm import load_causal_lm

    folder = tmp_path_factory.mktemp("vstar")
    model, tokenizer = load_causal_lm("tiny-gpt2")
    model.config.update({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    model.save_pretrained(folder / "gpt2")
    tokenizer.save_pretrained(folder / "gpt2")
    args = [*VSTAR, f"model.name={folder / 'gpt2'}"]
    result = launch("ddp.yaml", "run", *args, "--run-dir", str(folder / "ddp"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    one_process(args, folder / "single")
    return folder / "ddp", folder / "single"


@pytest.mark.slow
@only_in_test_distributed
def test_vstar_stages_before_the_verifier_match_one_process(vstar_runs):
    ddp, single = vstar_runs
    assert_same_training(ddp / "stages" / "generator-1", single / "stages" / "generator-1", steps=2)
    for stage in ("samples-1.jsonl", "test-1.jsonl"):  # sampled by process 0 from the same generator
        assert (ddp / "stages" / stage).read_text() == (single / "stages" / stage).read_text(), stage


@pytest.mark.slow
@only_in_test_distributed
def test_vstar_verifier_matches_one_process(vstar_runs):
    ddp, single = vstar_runs
    assert_same_training(ddp / "stages" / "verifier", single / "stages" / "verifier", steps=3)


# FSDP on the CPU. PyTorch 2.13's FSDP2 (`fully_shard`) runs on gloo, but Accelerate 1.16 turns FSDP on only for
# GPU-like devices: under configs/accelerate/fsdp.yaml with ACCELERATE_USE_CPU=true the processes form a plain
# MULTI_CPU (DDP) group, and without it each runs alone. This launcher script makes Accelerate take its GPU path on
# the CPU (its backend detection answers "gloo, MULTI_GPU" and the device is the CPU), so that Accelerate's own
# FSDP2 preparation (auto wrap, fully_shard, no_sync) runs here. It leans on two private methods of
# accelerate.state.PartialState: a new Accelerate may need it changed.
FSDP_ON_CPU = """
import runpy, sys, torch
import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType
PartialState._prepare_backend = lambda self, *args, **kwargs: ("gloo", DistributedType.MULTI_GPU)
PartialState.set_device = lambda self: setattr(self, "device", torch.device("cpu"))
prepare = accelerate.Accelerator.prepare
def prepare_and_tell(self, *objects, **kwargs):
    prepared = prepare(self, *objects, **kwargs)
    print(f"prepared: {self.distributed_type.value} {type(prepared[0]).__name__}", file=sys.stderr, flush=True)
    return prepared
accelerate.Accelerator.prepare = prepare_and_tell
sys.argv = ["lmforge", *sys.argv[1:]]
runpy.run_module("lmforge", run_name="__main__", alter_sys=True)
"""
# BERT classes have no `_no_split_modules` in transformers 5.x, so FSDP2's transformer auto wrap needs the layer class
# named (without it, fully_shard of the root fails on an already sharded parameter).
FSDP_FINETUNE = ("--fsdp_transformer_layer_cls_to_wrap", "BertLayer")
# Checkpoints at steps 2 and 4 and the best model (early stopping on, evaluation every 2 steps) are saved from the
# gathered shards as well; the best of the two evaluations is restored into the shards before final/ is written.
FSDP_SAVES = ["train.save_every=2", "train.eval_every=2", "train.early_stopping_patience=3", "train.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    (folder / "fsdp_on_cpu.py").write_text(FSDP_ON_CPU)
    args = [*CASES["finetune"], *FSDP_SAVES]
    env = {"ACCELERATE_USE_CPU": None, "LMFORGE_DEBUG": "1"}  # the script's "GPU path" initialises the gloo group
    script = folder / "fsdp_on_cpu.py"
    result = launch(
        "fsdp.yaml", "run", *args, "--run-dir", str(folder / "fsdp"), options=FSDP_FINETUNE, script=script, env=env
    )
    one_process(args, folder / "single")
    return result, folder / "fsdp", folder / "single"


@pytest.mark.slow
@only_in_test_distributed
def test_fsdp_on_cpu_trains_as_one_process(fsdp_runs):
    result, fsdp, single = fsdp_runs
    # Both processes trained an FSDP2 model (fully_shard makes the class FSDP<name>), not a DDP one.
    assert result.stderr.count("prepared: FSDP FSDPBertForSequenceClassification") == 2, result.stderr[-3000:]
    assert_same_training(fsdp, single, steps=4, finished=False)  # the final save is the next test


@pytest.mark.slow
@only_in_test_distributed
def test_fsdp_on_cpu_saves_what_one_process_saves(fsdp_runs):
    """final/, the best model and each checkpoint (weights and SGD's momentum) hold the whole tensors one process
    saves, gathered from both processes' shards."""
    from safetensors.torch import load_file

    from lmforge.core.checkpoint import load_state

    result, fsdp, single = fsdp_runs
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(fsdp, single, steps=4)
    steps = sorted(p.name for p in (single / "checkpoints").glob("step-*"))
    assert steps == ["step-00000002", "step-00000004"]
    assert sorted(p.name for p in (fsdp / "checkpoints").glob("step-*")) == steps
    for name in ["best.safetensors", *(f"{step}/model.safetensors" for step in steps)]:
        got, want = load_file(fsdp / "checkpoints" / name), load_file(single / "checkpoints" / name)
        assert got.keys() == want.keys() and len(want) > 10, name
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    for step in steps:
        got, want = (load_state(run / "checkpoints" / step, "training_state")["optimizer"] for run in (fsdp, single))
        assert got["param_groups"] == want["param_groups"], step
        assert got["state"].keys() == want["state"].keys() and want["state"], step
        for index, state in want["state"].items():
            got_buffer = got["state"][index]["momentum_buffer"]
            want_buffer = state["momentum_buffer"]
            torch.testing.assert_close(got_buffer, want_buffer, rtol=1e-4, atol=1e-5, msg=f"{step} {index}")


# The shipped config files, read as `accelerate launch --config_file` reads them (no launch, no DeepSpeed needed).


def launch_settings(config: Path):
    """(the launcher's arguments, the config file as Accelerate loaded it) for `--config_file config`."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_the_shipped_accelerate_configs_load_as_accelerate_reads_them():
    from accelerate.commands.launch import launch_command_parser

    options = set(vars(launch_command_parser().parse_args(["train.py"])))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, kind in expected.items():
        args, loaded = launch_settings(CONFIGS / f"{name}.yaml")
        assert loaded.distributed_type.value == kind, name
        assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (
            kind == "MULTI_GPU",
            kind == "FSDP",
            kind == "DEEPSPEED",
        )
        assert args.num_processes == 2 and args.mixed_precision == "no", name  # train.mixed_precision decides
        # Accelerate copies a section's keys onto its launch options without checking them: a misspelt key would
        # be silently ignored, so every key must be one of `accelerate launch`'s options.
        section = {**loaded.fsdp_config, **loaded.deepspeed_config}
        unknown = [key for key in section if key not in options and f"fsdp_{key}" not in options]
        assert not unknown, f"{name}.yaml: not options of accelerate launch: {unknown}"


def test_fsdp_config_gives_fsdp2_full_shard_wrapped_by_transformer_layer(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = launch_settings(CONFIGS / "fsdp.yaml")
    for key, value in prepare_multi_gpu_env(args).items():  # what each launched process finds in its environment
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.transformer_cls_names_to_wrap is None  # the model's own _no_split_modules
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_give_their_zero_stage(stage, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, loaded = launch_settings(CONFIGS / f"deepspeed_zero{stage}.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join(loaded.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)  # the JSON file is named relative to the repository root, where launches start
    plugin = DeepSpeedPlugin()  # as Accelerate builds it in each launched process; needs no DeepSpeed install
    plugin.set_mixed_precision("no")
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == stage == ds["zero_optimization"]["stage"]
    # lmforge prepares no DataLoader, so Accelerate cannot fill "auto" here; one step per backward (train.grad_accum=1)
    assert isinstance(ds["train_micro_batch_size_per_gpu"], int) and ds["gradient_accumulation_steps"] == 1
    assert "optimizer" not in ds and "scheduler" not in ds, "lmforge passes its own optimizer and schedule"
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}  # from train.mixed_precision
    assert (
        yaml.safe_load((CONFIGS / f"deepspeed_zero{stage}.yaml").read_text())["deepspeed_config"][
            "deepspeed_config_file"
        ]
        == f"configs/accelerate/deepspeed_zero{stage}.json"
    )
