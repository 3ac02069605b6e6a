r"""How much of bfloat16's speed the project's real training work takes, and at what accuracy cost.

On a CPU with bfloat16 units (AVX512-BF16 or AMX, `lmforge.core.hardware.cpu_support`, recorded) a
bfloat16 matrix product runs several times faster than a float32 one. `train.mixed_precision=bf16` runs
the forward pass under Accelerate's bfloat16 autocast (weights, gradients and optimizer state stay
float32); `train.mixed_precision=no` is plain float32. Every run below is a real `lmforge run`
subprocess, the same recipe in both precisions and nothing else changed.

--part steps     Seconds per optimizer step of three workloads (--workloads, default all):
                   minilm_finetune  finetune/minilm_sst2 (MiniLM, every weight trained, batch 32)
                   minilm_lora      lora/minilm_sst2 (MiniLM, LoRA r=8 on query and value, batch 32)
                   gemma_lora_sft   sft/gemma_gsm8k (Gemma 3 270M, LoRA r=8 on every linear layer,
                                    2 micro-batches of 4 per step, up to 384 tokens)
                 each as two arms, fp32 (train.mixed_precision=no) and bf16 (train.mixed_precision=bf16),
                 every call a fresh run of train.max_steps=K steps (--steps; default 20 for MiniLM, 6 for
                 Gemma) whose seconds per step are its final.json's train_seconds / steps: forward,
                 backward and optimizer only, with model loading, data preparation and evaluation left
                 out; the first step's one-time costs are in it, spread over the K steps. The final
                 evaluation is cut short (data.max_eval_examples=64 for MiniLM, sft.dev_size=8 for
                 Gemma) since it is not timed.
                 How it times (benchmarks/timing.py): afresh on every run (nothing is reused).
                 `timing.time_rounds` runs one warm-up call of each arm, never counted or stored, then
                 --rounds (at least 3) rounds with the starting arm alternating. The 1-minute load
                 average is read at the start and end of every call; a call above --max-load (default:
                 the CPU count plus one half) is not written and one line says so (if every call of a workload is, its
                 stored entry stays). Reported per arm: median, min-max and IQR; per workload the
                 speed-up fp32/bf16 (ratio of medians). Beside them, the 2048 x 2048 matmul peak in
                 float32 and bfloat16 (GFLOP/s, at the start and at the end of the part, each refused
                 above --max-load like a call), whose ratio is the most bfloat16 could give: each
                 workload's speed-up is also given as a share of it.
--part accuracy  finetune/minilm_sst2 at train.epochs=--epochs (default 1, sized for a CPU) with
                 train.mixed_precision no and bf16, at each of --seeds (default 1 2 3, train.seed):
                 SST-2 dev accuracy per run, mean and sample standard deviation per arm, the difference
                 of means bf16 - fp32 and the per-seed (paired: same initialisation and data order)
                 differences. The learning rate is the recipe's in both arms, with no tuning: the
                 comparison is the same recipe in two precisions. Each run is kept in --work and
                 reused only when its config.yaml resolves to the config this command asks for (an
                 interrupted one is resumed); a run folder made with other settings is refused, naming
                 the keys that differ. Each run's command is recorded.

--set KEY=VALUE adds overrides to every run of either part (for quick checks: model.name=tiny-bert).
Results are merged into benchmarks/bfloat16/results.json (or --results): one entry per workload
("steps.minilm_finetune", ...) and one "accuracy" entry, each with the machine, CPU bfloat16 support,
torch version, date, command line and commit.

Full benchmark, from the repository root (the full commands):
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bfloat16/bench.py --part steps
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bfloat16/bench.py --part accuracy
  (--part steps runs, for each workload W of recipe R and evaluation cut E above, K its steps, and each
   arm A with precision P, fp32 with no and bf16 with bf16, from the repository root:
   lmforge run R E train.max_steps=K train.mixed_precision=P --run-dir benchmarks/bfloat16/work/steps/W-A
   e.g. lmforge run sft/gemma_gsm8k sft.dev_size=8 train.max_steps=6 train.mixed_precision=bf16 \
       --run-dir benchmarks/bfloat16/work/steps/gemma_lora_sft-bf16
   --part accuracy runs, for each seed S in 1 2 3, then each arm A with precision P, fp32 with no and
   bf16 with bf16, from the repository root:
   lmforge run finetune/minilm_sst2 train.epochs=1 train.seed=S train.mixed_precision=P \
       --run-dir benchmarks/bfloat16/work/accuracy/A-seedS)
Quickest checks:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bfloat16/bench.py --part steps --steps 2 \
      --workloads minilm_finetune minilm_lora --max-load 99 --matmul-size 256 \
      --work /tmp/bf16-work --results /tmp/bf16-results.json
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bfloat16/bench.py --part accuracy --seeds 1 \
      --set train.max_steps=2 model.name=tiny-bert --work /tmp/bf16-work --results /tmp/bf16-results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared timing rules and records
import timing  # noqa: E402

ROOT = HERE.parents[1]
ARMS = {"fp32": "no", "bf16": "bf16"}  # arm name -> train.mixed_precision


@dataclasses.dataclass(frozen=True)
class Workload:
    recipe: str
    default_steps: int
    overrides: tuple[str, ...]  # only to shorten the untimed final evaluation


WORKLOADS = {
    "minilm_finetune": Workload("finetune/minilm_sst2", 20, ("data.max_eval_examples=64",)),
    "minilm_lora": Workload("lora/minilm_sst2", 20, ("data.max_eval_examples=64",)),
    "gemma_lora_sft": Workload("sft/gemma_gsm8k", 6, ("sft.dev_size=8",)),
}
ACCURACY_RECIPE = "finetune/minilm_sst2"


# ---- records shared by both parts ---------------------------------------------------------------


def provenance() -> dict:
    import torch
    from records import benchmark_provenance

    from lmforge.core.hardware import cpu_support

    support = cpu_support()
    return {
        **benchmark_provenance(),  # its commit says "+changes" when src/ or benchmarks/ differ from it
        "cpu_bfloat16": {**dataclasses.asdict(support), "fast_bfloat16": support.fast_bfloat16},
        "torch_threads": torch.get_num_threads(),
    }


def lmforge_run(recipe: str, overrides: list[str], run_dir: Path, resume: bool = False) -> list[str]:
    """The `lmforge run` command line as it is recorded (the interpreter's `-m lmforge` shown as `lmforge`),
    run from the repository root."""
    run_dir = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    if resume:
        return ["lmforge", "run", recipe, "--resume", "--run-dir", str(run_dir)]
    return ["lmforge", "run", recipe, *overrides, "--run-dir", str(run_dir)]


def call(command: list[str], log: Path) -> None:
    """Run a recorded `lmforge ...` command in its own process, its output to `log`; a failure stops here."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # the tokenizer's own thread pool would add threads beyond torch's to the load being checked
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "a") as f:
        done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed (exit {done.returncode}); see {log}")


# ---- --part steps ------------------------------------------------------------------------------


def matmul_speeds(size: int, when: str, max_load: float) -> dict:
    """GFLOP/s of a size x size torch.mm in float32 and bfloat16 (causal_lm/throughput.py's measure), with
    the load before and after; `refused` holds the line that says a loaded reading is not used."""
    from causal_lm.throughput import matmul_peak

    load_start = timing.load_average()
    speeds = {dtype: matmul_peak(dtype, size=size) for dtype in ("float32", "bfloat16")}
    load_end = timing.load_average()
    refused = timing.load_refusal(f"matmul peak at the {when}", load_start, load_end, max_load)
    if refused:
        print(refused, file=sys.stderr, flush=True)
    return {**speeds, "load_start": load_start, "load_end": load_end, "refused": refused}


def time_workload(name: str, steps: int, extra: list[str], work: Path, rounds: int, max_load: float) -> dict:
    """Both arms of one workload by timing.time_rounds; the entry to store (refused calls left out)."""
    workload = WORKLOADS[name]
    calls: list[dict] = []  # one per call, in the order time_rounds makes them

    def arm(arm_name: str):
        overrides = [*workload.overrides, f"train.max_steps={steps}", f"train.mixed_precision={ARMS[arm_name]}"]
        overrides += extra
        run_dir = work / "steps" / f"{name}-{arm_name}"
        command = lmforge_run(workload.recipe, overrides, run_dir)

        def run_and_read() -> float:
            shutil.rmtree(run_dir, ignore_errors=True)  # every call is a fresh run
            started = time.perf_counter()
            call(command, run_dir.with_suffix(".log"))
            wall = time.perf_counter() - started
            final = json.loads((run_dir / "final.json").read_text())
            if final["steps"] != steps:
                raise SystemExit(f"{run_dir}: {final['steps']} steps, expected {steps}")
            per_step = final["train_seconds"] / final["steps"]
            calls.append({"arm": arm_name, "seconds_per_step": per_step, "wall_seconds": round(wall, 1)})
            return per_step

        return command, run_and_read

    arms = {arm_name: arm(arm_name) for arm_name in ARMS}
    print(f"{name}: {len(ARMS) * (rounds + 1)} runs of {steps} steps", flush=True)
    for arm_name, (command, _) in arms.items():
        print(f"  {arm_name}: {shlex.join(command)}", flush=True)
    timed = timing.time_rounds({a: run for a, (_, run) in arms.items()}, rounds=rounds)
    rows = timed.warmup + timed.rows
    for row, record in zip(rows, calls):
        written = timing.load_refusal(row.arm, row.load_start, row.load_end, max_load) is None
        record.update(round=row.round, load_start=row.load_start, load_end=row.load_end, written=written)
    refused = [
        line for r in timed.rows if (line := timing.load_refusal(f"{name} {r.arm}", r.load_start, r.load_end, max_load))
    ]
    for line in refused:
        print(line, file=sys.stderr, flush=True)
    summary = timing.summarize(timed.seconds(max_load))
    for line in timing.format_summary(summary, unit_name="s/step"):
        print(f"  {line}", flush=True)
    ratio = timing.median_ratios(summary, [("fp32", "bf16")])
    if ratio:
        print(f"  {name}: bf16 speed-up (fp32 / bf16 median) {ratio['fp32 / bf16']:.2f}x", flush=True)
    return {
        "recipe": workload.recipe,
        "steps_per_run": steps,
        "commands": {a: shlex.join(command) for a, (command, _) in arms.items()},
        "arms": summary,
        "speedup_fp32_over_bf16": ratio.get("fp32 / bf16"),
        "order": timed.order(),
        "calls": [c for c in calls if c["round"] >= 0 and c["written"]],
        "refused": refused,
    }


def steps_part(args) -> dict[str, dict]:
    """The entries to merge: one per workload with at least one written call."""
    base = provenance()
    print(f"CPU bfloat16 support: {base['cpu_bfloat16']}; torch {base['torch']}", flush=True)
    matmul = {"start": matmul_speeds(args.matmul_size, "start", args.max_load)}
    measured = {}
    for name in args.workloads:
        steps = args.steps or WORKLOADS[name].default_steps
        measured[name] = time_workload(name, steps, args.set, args.work, args.rounds, args.max_load)
    matmul["end"] = matmul_speeds(args.matmul_size, "end", args.max_load)
    # the most bfloat16 can give: its matmul speed-up, from the readings taken under an allowed load
    ratios = [m["bfloat16"] / m["float32"] for m in matmul.values() if not m["refused"]]
    ceiling = statistics.mean(ratios) if ratios else None
    for when, m in matmul.items():
        if not m["refused"]:
            print(
                f"matmul {args.matmul_size}x{args.matmul_size} at the {when}: float32 {m['float32']:.0f} GFLOP/s, "
                f"bfloat16 {m['bfloat16']:.0f} GFLOP/s ({m['bfloat16'] / m['float32']:.2f}x)",
                flush=True,
            )
    stored_matmul = {  # a loaded reading's speeds are not written, only its loads and refusal
        when: m if not m["refused"] else {k: m[k] for k in ("load_start", "load_end", "refused")}
        for when, m in matmul.items()
    }
    entries = {}
    for name, result in measured.items():
        if not result["arms"]:
            print(f"{name}: every call refused for load; the stored entry is left as it was", file=sys.stderr)
            continue
        speedup = result["speedup_fp32_over_bf16"]
        share = speedup / ceiling if speedup and ceiling else None
        if share is not None:
            print(f"{name}: {speedup:.2f}x of the matmul's {ceiling:.2f}x ({100 * share:.0f}%)", flush=True)
        entries[f"steps.{name}"] = {
            **base,
            "max_load": args.max_load,
            "set": args.set,
            **result,
            "matmul_gflops": {"size": args.matmul_size, **stored_matmul},
            "matmul_speedup_bfloat16": ceiling,
            "share_of_matmul_speedup": share,
        }
    return entries


# ---- --part accuracy ---------------------------------------------------------------------------


def resolved(source: str | Path, overrides: list[str]) -> dict:
    """A recipe (or a run's config.yaml) with overrides, fully resolved as dotted keys."""
    from lmforge.cli.main import find_recipe
    from lmforge.core.stages import flat
    from lmforge.registry import load_run_config

    path = source if isinstance(source, Path) else find_recipe(source)
    return flat(load_run_config(path, overrides).to_dict())


def accuracy_run(run_dir: Path, overrides: list[str]) -> tuple[dict, str, bool]:
    """(final.json, the command that made it, reused) of one run: reused when finished with the same
    settings, resumed when interrupted with them, refused when made with others, started otherwise."""
    command = lmforge_run(ACCURACY_RECIPE, overrides, run_dir)
    config = run_dir / "config.yaml"
    if config.is_file():
        made, asked = resolved(config, []), resolved(ACCURACY_RECIPE, overrides)
        differ = [
            f"{k}={made.get(k)!r} (this command: {asked.get(k)!r})"
            for k in sorted(made.keys() | asked.keys())
            if made.get(k) != asked.get(k)
        ]
        if differ:
            raise SystemExit(f"{run_dir} was made with other settings: {'; '.join(differ)}; move it or pass --work")
    if (run_dir / "final.json").is_file():
        print(f"reused (same settings): {shlex.join(command)}", flush=True)
        return json.loads((run_dir / "final.json").read_text()), shlex.join(command), True
    resume = config.is_file()
    print(f"{'resuming' if resume else 'running'}: {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    call(lmforge_run(ACCURACY_RECIPE, overrides, run_dir, resume=resume), run_dir.with_suffix(".log"))
    print(f"finished in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((run_dir / "final.json").read_text()), shlex.join(command), False


def mean_std(values: list[float]) -> dict:
    return {
        "n": len(values),
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,  # sample standard deviation
        "values": values,
    }


def shown(stats: dict) -> str:
    std = "n/a" if stats["std"] is None else f"{100 * stats['std']:.2f}"
    return f"{100 * stats['mean']:.2f} ± {std} (n={stats['n']})"


def accuracy_part(args) -> dict:
    runs, accuracies = {}, {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm, precision in ARMS.items():
            overrides = [f"train.epochs={args.epochs:g}", f"train.seed={seed}", f"train.mixed_precision={precision}"]
            overrides += args.set
            final, command, reused = accuracy_run(args.work / "accuracy" / f"{arm}-seed{seed}", overrides)
            accuracies[arm].append(final["metrics"]["accuracy"])
            runs[f"{arm}-seed{seed}"] = {
                "command": command,
                "reused": reused,
                "accuracy": final["metrics"]["accuracy"],
                "macro_f1": final["metrics"].get("macro_f1"),
                "steps": final["steps"],
            }
            print(f"{arm} seed {seed}: SST-2 dev accuracy {100 * final['metrics']['accuracy']:.2f}", flush=True)
    arms = {arm: mean_std(values) for arm, values in accuracies.items()}
    paired = mean_std([b - f for b, f in zip(accuracies["bf16"], accuracies["fp32"])])
    for arm, stats in arms.items():
        print(f"{arm}: SST-2 dev accuracy {shown(stats)}", flush=True)
    print(f"bf16 - fp32: {100 * paired['mean']:+.2f} points (paired by seed: {shown(paired)})", flush=True)
    return {
        **provenance(),
        "recipe": ACCURACY_RECIPE,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "set": args.set,
        "learning_rate": "the recipe's, in both arms (no tuning)",
        "runs": runs,
        "arms": arms,
        "difference_bf16_minus_fp32": arms["bf16"]["mean"] - arms["fp32"]["mean"],
        "paired_differences": paired,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=["steps", "accuracy"], required=True)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides added to every run")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="run folders and logs")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    steps = parser.add_argument_group("--part steps")
    steps.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    steps.add_argument("--steps", type=int, help="optimizer steps per run (default: 20 for MiniLM, 6 for Gemma)")
    steps.add_argument("--rounds", type=int, default=timing.MIN_ROUNDS, help="measured rounds (at least 3)")
    steps.add_argument("--max-load", type=float, default=timing.default_max_load(), help="refuse calls above it")
    steps.add_argument("--matmul-size", type=int, default=2048, help="side of the matmul peak's matrices")
    accuracy = parser.add_argument_group("--part accuracy")
    accuracy.add_argument("--epochs", type=float, default=1.0, help="train.epochs of every run")
    accuracy.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    if args.rounds < timing.MIN_ROUNDS:
        parser.error(f"--rounds must be at least {timing.MIN_ROUNDS}")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    args.work = args.work.resolve()
    from records import merge_benchmark_result

    if "steps" in args.part:
        for key, entry in steps_part(args).items():
            merge_benchmark_result(args.results, key, entry)
    if "accuracy" in args.part:
        merge_benchmark_result(args.results, "accuracy", accuracy_part(args))


if __name__ == "__main__":
    main()
