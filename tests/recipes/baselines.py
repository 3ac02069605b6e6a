"""Recorded numbers of every shipped recipe on a tiny model, to prove a refactor changes no result.

Each baseline is one `lmforge run RECIPE ...` command on tiny-bert or tiny-gpt2 with a few steps and a
fixed seed, run through the CLI in a fresh process. What it keeps of the run folder: every record of
every metrics.jsonl (the run's own and those of its stages) and the numbers of every final.json, less
the fields that measure time (they differ from one run to the next; see DROPPED_KEYS).

    .venv/bin/python tests/recipes/baselines.py --record     # writes tests/recipes/baselines.json

--record runs the code of a commit (HEAD unless --commit says another), exported from git, so edits
in the checkout do not leak into the recorded numbers.

tests/recipes/test_baselines.py reruns the commands and compares every recorded value.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINES_FILE = Path(__file__).with_name("baselines.json")
TIMEOUT = 1800  # seconds per run: a few seconds on an idle machine, minutes on a busy one

# Settings the recipe tests already use on tiny models (test_recipes.py, test_kbert_run.py,
# test_tinybert_run.py, test_sft_run.py, test_vstar_run.py), with the seed written out and the
# training loss logged at every step so each step's loss is recorded.
SEED = ["train.seed=42"]
CLASSIFIER = [
    "model.name=tiny-bert",
    "train.max_steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "train.log_every=1",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
    *SEED,
]
ADALORA_SCHEDULE = ["adalora.tinit=1", "adalora.tfinal=2", "adalora.deltaT=1"]  # a 6-step budget schedule
KBERT = [*CLASSIFIER, "model.max_length=64"]
TINYBERT_STUDENT = [
    "tinybert.student.layers=1",
    "tinybert.student.hidden=32",
    "tinybert.student.heads=2",
    "tinybert.student.intermediate=64",
]
SFT = [
    "model.name=tiny-gpt2",
    "model.max_length=512",
    "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.log_every=1",
    "sft.dev_size=8",
    *SEED,
]
VSTAR = [
    "model.name=tiny-gpt2",
    "model.max_length=1024",
    "data.max_train_examples=6",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.grad_accum=1",
    "train.eval_batch_size=8",
    "train.log_every=1",
    "vstar.iterations=2",
    "vstar.samples_per_problem=2",
    "vstar.max_new_tokens=24",
    "vstar.test_problems=3",
    "vstar.test_samples=4",
    "vstar.ks=[1,2,4]",
    "vstar.target_modules=[c_attn,c_proj,c_fc]",
    "vstar.verifier.batch_size=2",
    "vstar.verifier.grad_accum=1",
    "vstar.orm.enabled=true",
    "vstar.orm.batch_size=4",
    "vstar.orm.grad_accum=1",
    *SEED,
]

# name -> the arguments after `lmforge run`; `{run:NAME}` stands for the folder of the earlier run NAME.
# In order: the TinyBERT task run distils from the teacher and general runs above it.
COMMANDS: dict[str, list[str]] = {
    "adalora/minilm_sst2": ["adalora/minilm_sst2", *CLASSIFIER, *ADALORA_SCHEDULE],
    "adalora/minilm_trec6": ["adalora/minilm_trec6", *CLASSIFIER, *ADALORA_SCHEDULE],
    # three tasks of 48 examples (3 steps each), EWC: the Fisher stage and the penalty in every later step
    "continual/minilm_stream": [
        "continual/minilm_stream",
        "model.name=tiny-bert",
        "model.max_length=32",
        "data.max_train_examples=48",
        "data.max_eval_examples=32",
        "train.batch_size=16",
        "train.log_every=1",
        "continual.strategy=ewc",
        "continual.fisher_examples=16",
        *SEED,
    ],
    # GSM8K then MBPP, 3 full fine-tuning steps each, 8 GSM8K pairs replayed during MBPP
    "continual_lm/gemma_gsm8k_mbpp": [
        "continual_lm/gemma_gsm8k_mbpp",
        "model.name=tiny-gpt2",
        "model.max_length=512",
        "train.max_steps=3",
        "train.eval_every=3",
        "train.log_every=1",
        "data.max_train_examples=24",
        "continual_lm.held_out=8",
        "continual_lm.strategy=replay",
        "continual_lm.replay_size=8",
        *SEED,
    ],
    # two generations of 4 steps on a long tail drawn from 600 TREC questions; every pseudo-label counts
    "crest/minilm_trec6": [
        "crest/minilm_trec6",
        "model.name=tiny-bert",
        "model.max_length=32",
        "train.max_steps=4",
        "train.batch_size=8",
        "train.eval_every=2",
        "train.log_every=1",
        "data.max_train_examples=600",
        "data.max_eval_examples=32",
        "crest.generations=2",
        "crest.threshold=0.0",
        *SEED,
    ],
    "finetune/minilm_agnews": ["finetune/minilm_agnews", *CLASSIFIER],
    "finetune/minilm_sst2": ["finetune/minilm_sst2", *CLASSIFIER],
    "finetune/minilm_trec6": ["finetune/minilm_trec6", *CLASSIFIER],
    "kbert/minilm_obqa": ["kbert/minilm_obqa", *KBERT],
    "kbert/minilm_sst2": ["kbert/minilm_sst2", *KBERT],
    # TREC-50's dev labels must all occur in training: the whole training split, two steps
    "kbert/minilm_trec50": [
        "kbert/minilm_trec50",
        "model.name=tiny-bert",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.log_every=1",
        "data.max_eval_examples=32",
        *SEED,
    ],
    "lora/minilm_agnews": ["lora/minilm_agnews", *CLASSIFIER],
    "lora/minilm_sst2": ["lora/minilm_sst2", *CLASSIFIER],
    "lora/minilm_trec6": ["lora/minilm_trec6", *CLASSIFIER],
    "sft/gemma_gsm8k": [
        "sft/gemma_gsm8k",
        *SFT,
        "sft.target_modules=c_attn,c_proj,c_fc",  # GPT-2's names for the block's linear (Conv1D) layers
        "train.max_steps=6",
        "train.eval_every=3",
        "data.max_train_examples=40",
    ],
    "sft/gemma_mbpp": ["sft/gemma_mbpp", *SFT, "sft.lora=false", "train.max_steps=2", "data.max_train_examples=8"],
    # the teacher of the TinyBERT task run: a fine-tuned tiny-bert
    "tinybert/teacher": [
        "finetune/minilm_sst2",
        "model.name=tiny-bert",
        "train.max_steps=20",
        "train.batch_size=8",
        "train.log_every=1",
        "data.max_train_examples=160",
        "data.max_eval_examples=32",
        *SEED,
    ],
    "tinybert/general_minilm": [
        "tinybert/general_minilm",
        "model.name=tiny-bert",
        "tinybert.teacher=tiny-bert",
        "train.max_steps=6",
        "train.batch_size=8",
        "train.eval_every=3",
        "train.log_every=1",
        "tinybert.held_out=16",
        *TINYBERT_STUDENT,
        *SEED,
    ],
    "tinybert/minilm_sst2": [
        "tinybert/minilm_sst2",
        "train.max_steps=10",
        "train.batch_size=8",
        "train.eval_every=5",
        "train.log_every=1",
        "data.max_train_examples=48",
        "data.max_eval_examples=32",
        "tinybert.augment_copies=2",
        "tinybert.teacher={run:tinybert/teacher}",
        "tinybert.init_from={run:tinybert/general_minilm}",
        *SEED,
    ],
    "vstar/gemma_gsm8k": ["vstar/gemma_gsm8k", *VSTAR],
    "vstar/gemma_mbpp": ["vstar/gemma_mbpp", *VSTAR, "vstar.iterations=1", "data.max_train_examples=4"],
}

# Fields that measure time, not the computation: they differ between two runs of the same command
# (found by running every command twice and comparing the run folders), so they are not recorded.
DROPPED_KEYS = frozenset(
    {
        "train_seconds",
    }
)
DROPPED_SUFFIXES = ("_seconds", "_per_second", "_per_s")


def dropped(key: str) -> bool:
    return key in DROPPED_KEYS or key.endswith(DROPPED_SUFFIXES)


def run_folder(root: Path, name: str) -> Path:
    return root / name.replace("/", "__")


def command_for(name: str, root: Path) -> list[str]:
    """The full `lmforge run` argument list of baseline NAME, its run folders under ROOT."""
    args = []
    for arg in COMMANDS[name]:
        for earlier in COMMANDS:
            arg = arg.replace(f"{{run:{earlier}}}", str(run_folder(root, earlier)))
        args.append(arg)
    return ["run", *args, "--run-dir", str(run_folder(root, name))]


def numbers(value, prefix: str = "") -> dict[str, float | int | bool | None]:
    """The numeric leaves of a JSON value, keyed by their dotted path; time fields and strings left out."""
    found = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if not dropped(key):
                found.update(numbers(item, f"{prefix}.{key}" if prefix else key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(numbers(item, f"{prefix}[{index}]"))
    elif value is None or isinstance(value, bool | int | float):
        found[prefix] = value
    return found


def collect(run_dir: Path) -> dict:
    """What is recorded of one finished run: metrics.jsonl records and final.json numbers, per file."""
    metrics, finals = {}, {}
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        metrics[str(path.relative_to(run_dir))] = [{k: v for k, v in r.items() if not dropped(k)} for r in records]
    for path in sorted(run_dir.rglob("final.json")):
        finals[str(path.relative_to(run_dir))] = numbers(json.loads(path.read_text()))
    return {"metrics.jsonl": metrics, "final.json": finals}


def environment(source: Path) -> dict[str, str]:
    cache = tempfile.mkdtemp(prefix="lmforge-baseline-cache-")  # never the user's cache: every run starts cold
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LMFORGE_CACHE": cache}
    if source != ROOT:  # an exported commit: its package, not the checkout's editable install
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source / "src"), env.get("PYTHONPATH")]))
    return env


def with_earlier_runs(names: list[str]) -> list[str]:
    """NAMES and the runs they need ({run:NAME} in their arguments), in the table's order."""
    needed = set(names)
    for name in reversed(list(COMMANDS)):
        if name in needed:
            needed |= {earlier for earlier in COMMANDS for arg in COMMANDS[name] if f"{{run:{earlier}}}" in arg}
    return [name for name in COMMANDS if name in needed]


def run_all(root: Path, names: list[str] | None = None, source: Path = ROOT) -> dict[str, dict]:
    """Run the baseline commands NAMES (default: all; in order, each after the runs it needs, see
    with_earlier_runs) from the code in SOURCE, their run folders under ROOT."""
    env, results = environment(source), {}
    for name in names or list(COMMANDS):
        args = command_for(name, root)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lmforge", *args],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"lmforge {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        results[name] = {"values": collect(run_folder(root, name)), "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name}: {results[name]['seconds']} s", file=sys.stderr, flush=True)
    return results


def machine() -> dict:
    """What identifies the machine the numbers came from: float results may differ across CPUs and thread counts."""
    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "arch": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def git_has(commit: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=ROOT, capture_output=True).returncode == 0


def export(commit: str, folder: Path) -> None:
    """The package and recipes exactly as COMMIT has them (not the checkout, which may hold edits). Until
    c100f10 the recipes were a top-level recipes/ folder (read from the working folder, the export); since
    then they are package data under src/lmforge/recipes/."""
    paths = ["src"] + (["recipes"] if git_has(commit, "recipes") else [])
    archive = subprocess.run(["git", "archive", commit, *paths], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)


def differences(recorded, now, path: str = "", rel: float = 0.0) -> list[str]:
    """Every place where NOW differs from RECORDED; floats within RELative tolerance count as equal."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        found = [f"{path}.{k}: missing now" for k in recorded.keys() - now.keys()]
        found += [f"{path}.{k}: new field" for k in now.keys() - recorded.keys()]
        for key in recorded.keys() & now.keys():
            found += differences(recorded[key], now[key], f"{path}.{key}", rel)
        return sorted(found)
    if isinstance(recorded, list) and isinstance(now, list):
        if len(recorded) != len(now):
            return [f"{path}: {len(recorded)} entries recorded, {len(now)} now"]
        return [d for i, (a, b) in enumerate(zip(recorded, now)) for d in differences(a, b, f"{path}[{i}]", rel)]
    both_float = isinstance(recorded, float) and isinstance(now, float)
    if both_float and rel and math.isclose(recorded, now, rel_tol=rel, abs_tol=1e-12):
        return []
    if recorded != now or type(recorded) is not type(now):
        return [f"{path}: recorded {recorded!r}, now {now!r}"]
    return []


def record(commit: str, runs: Path | None) -> None:
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmforge-baselines-") as scratch:
        source = Path(scratch) / "source"
        source.mkdir()
        export(sha, source)
        results = run_all(runs or Path(scratch) / "runs", source=source)
    total = round(time.perf_counter() - started, 1)
    document = {
        "commit": sha,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "record_seconds": total,
        "dropped_keys": sorted(DROPPED_KEYS),
        "dropped_suffixes": list(DROPPED_SUFFIXES),
        "baselines": {
            name: {"command": ["lmforge", *command_for(name, Path("RUNS"))], **result}
            for name, result in results.items()
        },
    }
    BASELINES_FILE.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {BASELINES_FILE} ({len(results)} runs from {sha[:12]}, {total} s)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"run every command and write {BASELINES_FILE.name}")
    parser.add_argument("--commit", default="HEAD", help="record from the code of this commit (default: HEAD)")
    parser.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    if args.record:
        record(args.commit, args.runs)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
