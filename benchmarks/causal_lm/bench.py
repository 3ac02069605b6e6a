"""Benchmark the causal-LM core on Gemma 3 270M (base): task scores before and after a short LoRA SFT,
generation throughput batched vs one sequence at a time, and the sandbox's cost per program.

--part throughput  one process, the model loaded once: the same --throughput-prompts GSM8K dev prompts
                   (zero-shot), greedy, --throughput-tokens new tokens at most and no stop strings,
                   generated with batch size 1 and with --batch-size, in alternating rounds. Reports
                   generated tokens per second of each (median over rounds), their ratio, and whether
                   the batched completions equal the unbatched ones (left padding must not change
                   greedy decoding).
--part batch_sizes the first 32 zero-shot GSM8K dev prompts sampled (temperature 0.7, seed 1, 32 new
                   tokens) by `HFGenerator` at each of --batch-sizes (8 16 32), one pass each, prefill
                   included: tokens per second of each.
--part sandbox     `generation.sandbox.run_python` on an empty program against a bare `python -I -B -c pass`
                   subprocess of the same interpreter (alternating, --sandbox-runs each): the overhead
                   per program; then every MBPP test reference program of --limit problems through
                   `run_many` (2 workers): programs per second, and all must pass.
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
from records import run_once  # noqa: E402

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


def throughput(n_prompts: int, max_new_tokens: int, batch_size: int, rounds: int) -> dict:
    from lmforge.generation.generate import HFGenerator
    from lmforge.generation.sampling import SamplingParams
    from lmforge.models.causal_lm import load_causal_lm
    from lmforge.tasks import load_task

    model, tokenizer = load_causal_lm(MODEL)
    prompts = [p.prompt for p in load_task("gsm8k").problems("dev", limit=n_prompts, shots=0)]
    params = SamplingParams(max_new_tokens=max_new_tokens)  # greedy, no stop strings: only EOS ends early
    generators = {
        "unbatched": HFGenerator(model, tokenizer, batch_size=1),
        "batched": HFGenerator(model, tokenizer, batch_size=batch_size),
    }
    generators["batched"].generate(prompts[:batch_size], SamplingParams(max_new_tokens=4))  # warm up
    speeds: dict[str, list[float]] = {name: [] for name in generators}
    outputs = {}
    for r in range(rounds):
        for name in list(generators) if r % 2 == 0 else list(generators)[::-1]:
            started = time.perf_counter()
            completions = generators[name].generate(prompts, params, progress=True)
            seconds = time.perf_counter() - started
            tokens = sum(c[0].tokens for c in completions)
            speeds[name].append(tokens / seconds)
            outputs[name] = [c[0].text for c in completions]
            print(
                f"round {r + 1} {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.2f} tokens/s",
                flush=True,
            )
    same = sum(a == b for a, b in zip(outputs["unbatched"], outputs["batched"]))
    out = {
        "prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "rounds": rounds,
        "tokens_per_second": {name: statistics.median(v) for name, v in speeds.items()},
        "tokens_per_second_each_round": speeds,
        "identical_completions": same,
    }
    out["batched_over_unbatched"] = out["tokens_per_second"]["batched"] / out["tokens_per_second"]["unbatched"]
    print(
        f"\nthroughput, {n_prompts} GSM8K prompts, greedy, up to {max_new_tokens} new tokens: "
        f"batch 1 {out['tokens_per_second']['unbatched']:.2f} tokens/s, batch {batch_size} "
        f"{out['tokens_per_second']['batched']:.2f} tokens/s, ratio {out['batched_over_unbatched']:.2f}x; "
        f"{same}/{n_prompts} completions identical"
    )
    return {**provenance(), **out}


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


def sandbox(runs: int, limit: int) -> dict:
    from dataclasses import asdict

    from lmforge.generation.sandbox import isolation, run_many, run_python
    from lmforge.tasks import load_task

    iso = isolation()
    times: dict[str, list[float]] = {"sandbox": [], "bare_subprocess": []}
    for i in range(runs):
        for name in ("sandbox", "bare_subprocess") if i % 2 == 0 else ("bare_subprocess", "sandbox"):
            started = time.perf_counter()
            if name == "sandbox":
                result = run_python("pass")
                assert result.passed, result
            else:
                subprocess.run([iso.python, "-I", "-B", "-c", "pass"], check=True)
            times[name].append(time.perf_counter() - started)
    median = {name: 1000 * statistics.median(v) for name, v in times.items()}
    task = load_task("mbpp")
    problems = task.problems(task.eval_split, limit=limit, shots=0)
    programs = [task.program_for(p, p.reference) for p in problems]
    started = time.perf_counter()
    results = run_many(programs, workers=2, progress=True)
    seconds = time.perf_counter() - started
    out = {
        "isolation": asdict(iso),
        "runs": runs,
        "empty_program_ms": median,
        "overhead_ms": median["sandbox"] - median["bare_subprocess"],
        "mbpp_references": {
            "programs": len(programs),
            "passed": sum(r.passed for r in results),
            "seconds": seconds,
            "programs_per_second": len(programs) / seconds,
            "median_program_seconds": statistics.median(r.seconds for r in results),
        },
    }
    print(
        f"\nsandbox ({'own uid' if iso.own_user else 'same user'}, network {'cut' if iso.network_cut else 'kept'}): "
        f"empty program {median['sandbox']:.1f} ms against {median['bare_subprocess']:.1f} ms for a bare "
        f"subprocess: {out['overhead_ms']:.1f} ms overhead per program; {len(programs)} MBPP reference programs "
        f"in {seconds:.1f} s with 2 workers ({out['mbpp_references']['programs_per_second']:.1f}/s), "
        f"{out['mbpp_references']['passed']} passed"
    )
    return {**provenance(), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["throughput", "batch_sizes", "sandbox", "base", "sft"]
    parser.add_argument("--part", nargs="+", choices=parts, required=True)
    parser.add_argument("--limit", type=int, default=50, help="problems of each task (default: %(default)s)")
    parser.add_argument("--sft-set", nargs="*", default=[], help="key=value overrides of both SFT recipes")
    parser.add_argument("--throughput-prompts", type=int, default=16)
    parser.add_argument("--throughput-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="throughput: the batched generator's")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32], help="batch_sizes: the sizes")
    parser.add_argument("--sandbox-runs", type=int, default=40)
    parser.add_argument("--work", type=Path, default=HERE / "work", help="runs and evaluations (reused)")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    from records import merge_benchmark_result

    for part in args.part:  # each part's result is stored as soon as it is done
        if part == "throughput":
            result = throughput(args.throughput_prompts, args.throughput_tokens, args.batch_size, args.rounds)
        elif part == "batch_sizes":
            result = batch_sizes(32, 32, args.batch_sizes)
        elif part == "sandbox":
            result = sandbox(args.sandbox_runs, args.limit)
        elif part == "base":
            result = base(args.work, args.limit)
        else:
            result = sft(args.work, args.limit, args.sft_set)
        merge_benchmark_result(args.results, part, result)


if __name__ == "__main__":
    main()
