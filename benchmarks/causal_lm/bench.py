"""Benchmark the causal-LM core on Gemma 3 270M (base): task scores before and after a short LoRA SFT,
generation throughput batched vs one sequence at a time, and the sandbox's cost per program.

--part throughput  lmforge's decoding loop against transformers' `model.generate` on the same sorted
                   batches of --throughput-prompts GSM8K dev prompts (zero-shot; batch 1 on the first
                   --batch1-prompts), greedy, --throughput-tokens new tokens at most, no stop strings,
                   at each of --throughput-sizes and each of --dtypes (one process per dtype): tokens/s,
                   useful GFLOP/s against the machine's matmul peak in float32 and bfloat16, resident
                   memory, and whether the outputs are identical (see throughput.py).
--part batch_sizes the first 32 zero-shot GSM8K dev prompts sampled (temperature 0.7, seed 1, 32 new
                   tokens) by `HFGenerator` at each of --batch-sizes (8 16 32), one pass each, prefill
                   included: tokens per second of each.
--part sandbox     `generation.sandbox.run_python` on an empty program against a bare `python -I -B -c pass`
                   subprocess of the same interpreter: the overhead per program. Timed by
                   `timing.time_rounds` (benchmarks/timing.py), afresh on every run: one warm-up call of
                   each, never counted or stored, then --sandbox-runs rounds (at least 3) of one call each,
                   the starting arm alternating; median, min-max and IQR per arm, the overhead as the
                   difference of medians and the ratio of medians. The whole comparison takes seconds and
                   the kernel updates the 1-minute load average every 5 s, so it is one timing row: the
                   load is read before its first measured call and after its last, and above --max-load
                   (default: the CPU count plus one half) the row is not written and one line says so. Then every MBPP
                   test reference program of --limit problems through `run_many` (2 workers), one pass:
                   it is a throughput figure and a check that all pass, not a comparison, so it runs once
                   (no rounds); its load is read before and after too, and above --max-load its seconds
                   are not written (the pass count is). If both timing rows are refused, the stored
                   sandbox entry is left as it was.
--part base        `lmforge eval-gen gemma-3-270m` on the first --limit problems: GSM8K dev (carved from
                   the training split) with 8 exemplars and with none, MBPP test with 3 exemplars and
                   with none. Greedy, pass@1.
--part sft         `lmforge run sft/gemma_gsm8k` and `sft/gemma_mbpp` (with --sft-set overrides), then
                   `lmforge eval-gen RUN_DIR` zero-shot (the format they were trained in) on the same
                   problems as --part base.
Each eval-gen or training run is a real CLI call in its own process, kept in --work and reused when
finished (an interrupted benchmark picks up where it stopped; an interrupted training run resumes).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/causal_lm/bench.py --part throughput sandbox base sft
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
import timing  # noqa: E402
from records import run_once  # noqa: E402
from timing import default_max_load  # noqa: E402

ROOT = HERE.parents[1]
MODEL = "gemma-3-270m"
# (row, task, shots): base-model evaluations; the exemplar counts are the tasks' standard ones
# (GSM8K 8-shot chain of thought, Wei et al. 2022; MBPP 3-shot, Austin et al. 2021)
BASE_ROWS = [
    ("gsm8k_8shot", "gsm8k", 8),
    ("gsm8k_0shot", "gsm8k", 0),
    ("mbpp_3shot", "mbpp", 3),
    ("mbpp_0shot", "mbpp", 0),
]
SFT_RECIPES = {"gsm8k": "sft/gemma_gsm8k", "mbpp": "sft/gemma_mbpp"}


def provenance() -> dict:
    from records import benchmark_provenance

    return benchmark_provenance()


def eval_gen(model: str, task: str, shots: int, limit: int, out: Path) -> dict:
    command = [sys.executable, "-m", "lmforge", "eval-gen", model, "--task", task, "--shots", str(shots)]
    command += ["--limit", str(limit), "--out", str(out)]
    run_once(command, out / "metrics.json", out.with_suffix(".log"), ROOT)
    result = json.loads((out / "metrics.json").read_text())
    m, t = result["metrics"], result["timing"]
    return {
        "task": task,
        "split": result["split"],
        "shots": shots,
        "problems": m["problems"],
        "pass@1": m["pass@k"]["1"],
        "solved": m["correct_samples"],
        "statuses": m["statuses"],
        "finish_reasons": m["finish_reasons"],
        "generated_tokens": t["generated_tokens"],
        "generation_seconds": t["generation_seconds"],
        "tokens_per_second": t["tokens_per_second"],
    }


def print_scores(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print("| row | task / split | shots | pass@1 | solved | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['task']} {r['split']} | {r['shots']} | {100 * r['pass@1']:.1f} | "
            f"{r['solved']}/{r['problems']} | {r['tokens_per_second']:.1f} |"
        )


# ---- task scores ---------------------------------------------------------------------------------


def base(work: Path, limit: int) -> dict:
    rows = {
        name: eval_gen(MODEL, task, shots, limit, work / "eval" / f"base-{name}") for name, task, shots in BASE_ROWS
    }
    print_scores(f"{MODEL} base, greedy, first {limit} problems", rows)
    return {**provenance(), "limit": limit, "rows": rows}


def sft(work: Path, limit: int, sets: list[str]) -> dict:
    rows, runs = {}, {}
    for task, recipe in SFT_RECIPES.items():
        run_dir = work / "runs" / f"sft-{task}"
        resuming = (run_dir / "config.yaml").is_file()
        command = [sys.executable, "-m", "lmforge", "run", recipe, *(["--resume"] if resuming else sets)]
        run_once([*command, "--run-dir", str(run_dir)], run_dir / "final.json", run_dir.with_suffix(".log"), ROOT)
        final = json.loads((run_dir / "final.json").read_text())
        runs[task] = {
            "recipe": recipe,
            "overrides": sets,
            "train_pairs": final["train_pairs"],
            "steps": final["steps"],
            "train_seconds": final["train_seconds"],
            "held_out_loss": final["metrics"]["loss"],
            "trainable_parameters": final["trainable_parameters"],
        }
        rows[f"sft_{task}_0shot"] = eval_gen(str(run_dir), task, 0, limit, work / "eval" / f"sft-{task}-0shot")
    print_scores(f"{MODEL} after LoRA SFT, greedy, zero-shot, first {limit} problems", rows)
    return {**provenance(), "limit": limit, "runs": runs, "rows": rows}


# ---- throughput ----------------------------------------------------------------------------------


def throughput(args) -> dict:
    from throughput import sweep

    sizes, dtypes = args.throughput_sizes, args.dtypes
    rows = sweep(dtypes, args.throughput_prompts, args.batch1_prompts, args.throughput_tokens, sizes, args.max_load)
    return {**provenance(), **rows}


def batch_sizes(n_prompts: int, max_new_tokens: int, sizes: list[int]) -> dict:
    """Sampled generation (temperature 0.7, seed 1) of the same prompts at each batch size, one pass each,
    prefill included: how much a larger batch buys once sequences leave it as they stop."""
    from lmforge.generation.generate import HFGenerator
    from lmforge.generation.sampling import SamplingParams
    from lmforge.models.causal_lm import load_causal_lm
    from lmforge.tasks import load_task

    model, tokenizer = load_causal_lm(MODEL)
    prompts = [p.prompt for p in load_task("gsm8k").problems("dev", limit=n_prompts, shots=0)]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7, seed=1)
    HFGenerator(model, tokenizer, batch_size=sizes[0]).generate(prompts[: sizes[0]], SamplingParams(max_new_tokens=4))
    speeds = {}
    for size in sizes:
        started = time.perf_counter()
        completions = HFGenerator(model, tokenizer, batch_size=size).generate(prompts, params, progress=True)
        seconds = time.perf_counter() - started
        tokens = sum(c[0].tokens for c in completions)
        speeds[str(size)] = {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}
        print(f"batch {size}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.2f} tokens/s", flush=True)
    out = {"prompts": n_prompts, "max_new_tokens": max_new_tokens, "temperature": 0.7, "seed": 1, "batches": speeds}
    return {**provenance(), **out}


# ---- sandbox -------------------------------------------------------------------------------------


def sandbox(runs: int, limit: int, max_load: float) -> dict | None:
    """The empty program's cost in the sandbox and bare, then the MBPP references; None when both refused."""
    from dataclasses import asdict

    from lmforge.generation.sandbox import isolation, run_many, run_python
    from lmforge.tasks import load_task

    iso = isolation()

    def in_sandbox() -> None:
        result = run_python("pass")
        assert result.passed, result

    def bare() -> None:
        subprocess.run([iso.python, "-I", "-B", "-c", "pass"], check=True)

    timed = timing.time_rounds({"sandbox": in_sandbox, "bare_subprocess": bare}, runs)
    load = {"start": timed.rows[0].load_start, "end": timed.rows[-1].load_end}  # the row's first and last
    refusal = timing.load_refusal("sandbox empty program", load["start"], load["end"], max_load)
    empty: dict = {"runs": runs, "warmup_rounds": 1, "load_1min": load, "order": timed.order()}
    if refusal:
        print(refusal, flush=True)
        empty["refused"] = refusal
    else:
        summary = timing.summarize(timed.seconds())
        empty["seconds"] = summary  # per arm: rounds, median, min, max, q1, q3, iqr
        empty["empty_program_ms"] = {arm: 1000 * s["median"] for arm, s in summary.items()}
        empty["overhead_ms"] = empty["empty_program_ms"]["sandbox"] - empty["empty_program_ms"]["bare_subprocess"]
        ratios = timing.median_ratios(summary, [("sandbox", "bare_subprocess")])
        empty["sandbox_over_bare"] = ratios["sandbox / bare_subprocess"]
        print("\n".join(timing.format_summary(summary, unit=1e-3, unit_name="ms")))

    task = load_task("mbpp")
    problems = task.problems(task.eval_split, limit=limit, shots=0)
    programs = [task.program_for(p, p.reference) for p in problems]
    load_start, started = timing.load_average(), time.perf_counter()
    results = run_many(programs, workers=2, progress=True)
    seconds, load_end = time.perf_counter() - started, timing.load_average()
    references: dict = {"programs": len(programs), "passed": sum(r.passed for r in results), "passes": 1}
    references["load_1min"] = {"start": load_start, "end": load_end}
    references_refusal = timing.load_refusal("sandbox MBPP references", load_start, load_end, max_load)
    if references_refusal:
        print(references_refusal, flush=True)
        references["refused"] = references_refusal
    else:
        references["seconds"] = seconds
        references["programs_per_second"] = len(programs) / seconds
        references["median_program_seconds"] = statistics.median(r.seconds for r in results)
    if refusal and references_refusal:
        return None

    print(f"\nsandbox ({'own uid' if iso.own_user else 'same user'}, network {'cut' if iso.network_cut else 'kept'}):")
    if not refusal:
        ms = empty["empty_program_ms"]
        print(
            f"  empty program {ms['sandbox']:.1f} ms against {ms['bare_subprocess']:.1f} ms for a bare subprocess "
            f"(medians over {runs} rounds): {empty['overhead_ms']:.1f} ms overhead per program"
        )
    speed = "" if references_refusal else f" in {seconds:.1f} s ({references['programs_per_second']:.1f}/s)"
    print(f"  {len(programs)} MBPP reference programs{speed} with 2 workers, one pass: {references['passed']} passed")
    out = {"isolation": asdict(iso), "max_load": max_load, **empty, "mbpp_references": references}
    return {**provenance(), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["throughput", "batch_sizes", "sandbox", "base", "sft"]
    parser.add_argument("--part", nargs="+", choices=parts, required=True)
    parser.add_argument("--limit", type=int, default=50, help="problems of each task (default: %(default)s)")
    parser.add_argument("--sft-set", nargs="*", default=[], help="key=value overrides of both SFT recipes")
    parser.add_argument("--throughput-prompts", type=int, default=32)
    parser.add_argument("--batch1-prompts", type=int, default=8, help="throughput: prompts at batch size 1")
    parser.add_argument("--throughput-tokens", type=int, default=32)
    parser.add_argument("--throughput-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument(
        "--max-load",
        type=float,
        default=default_max_load(),
        help="throughput, sandbox: a row timed above this 1-minute load average is not written (default: CPUs + 0.5)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32], help="batch_sizes: the sizes")
    parser.add_argument("--sandbox-runs", type=int, default=40, help="sandbox: measured rounds (at least 3)")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="runs and evaluations (reused)")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if "sandbox" in args.part and args.sandbox_runs < timing.MIN_ROUNDS:
        parser.error(f"--sandbox-runs {args.sandbox_runs}: at least {timing.MIN_ROUNDS} measured rounds")
    from records import merge_benchmark_result

    for part in args.part:  # each part's result is stored as soon as it is done
        if part == "throughput":
            result = throughput(args)
        elif part == "batch_sizes":
            result = batch_sizes(32, 32, args.batch_sizes)
        elif part == "sandbox":
            result = sandbox(args.sandbox_runs, args.limit, args.max_load)
            if result is None:
                print("sandbox: both timing rows refused for load; the stored sandbox entry is left as it was")
                continue
        elif part == "base":
            result = base(args.work, args.limit)
        else:
            result = sft(args.work, args.limit, args.sft_set)
        merge_benchmark_result(args.results, part, result)


if __name__ == "__main__":
    main()
