"""Generation throughput of lmforge's decoding loop (`HFGenerator`) against transformers' `model.generate`,
over batch sizes and weight dtypes, read against the machine's own matmul peak.

One process per dtype (`--dtype-worker`, started by `sweep`), so that its resident memory is its own:
- the model is loaded in that dtype; the matmul peak (2048 x 2048 `torch.mm`, float32 and bfloat16) is
  measured at the start and at the end of the process;
- for each batch size, the same GSM8K dev prompts (zero-shot; batch 1 on the first `--batch1-prompts`
  of them, for time), sorted longest first and cut into the same batches for both arms, greedy, at most
  `--throughput-tokens` new tokens, no stop strings (only EOS ends a row early);
- the arms run by timing.time_rounds (a warm-up round apart, 3 rounds with the starting arm rotating,
  load recorded); `generate` is `model.generate(do_sample=False)` on each left-padded batch;
- outputs are compared row by row (text and generated-token count), and the float32 outputs against
  the bfloat16 ones;
- one more row at the largest batch size with a stop string ("\n\n", up to twice the tokens), where
  rows end at different steps: lmforge drops a finished row, `generate` computes it to the end of its
  batch (`stop_strings`); texts compared after cutting at the stop string;
- useful FLOPs of a pass: 2 x (non-embedding parameters) per token through the body (prompt tokens,
  and each generated token but the last, fed back) plus 2 x (embedding parameters) per logits row
  (the output layer, tied to the embedding, runs on the last position only); attention over the cache
  and padding are left out, so the figure is a lower bound of the work done;
- resident memory: after loading, and the peak while generating (the kernel's high-water mark, reset
  after loading through /proc/self/clear_refs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared timing rules
import timing  # noqa: E402

MODEL = "gemma-3-270m"
STOP = "\n\n"  # GSM8K's zero-shot answers end at a blank line more often than at EOS


def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 10, bursts: int = 5) -> float:
    """GFLOP/s of a size x size matrix product in `dtype_name`, the median of `bursts` bursts."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    warm_until = time.perf_counter() + 1.0  # a second of warm-up: threads spun up, clocks raised
    while time.perf_counter() < warm_until:
        torch.mm(a, b)
    speeds = []
    for _ in range(bursts):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        speeds.append(2 * size**3 * repeats / (time.perf_counter() - started) / 1e9)
    return statistics.median(speeds)


def memory_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS: resident now, VmHWM: resident at its highest), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_memory() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the resident high-water mark
        return True
    except OSError:
        return False


def hf_generate(model, tokenizer, batches: list[list[str]], max_new_tokens: int, eos_ids: set[int], stop=()):
    """transformers' own loop on the same batches: (text, generated tokens up to and including EOS) per row;
    with stop strings, the text is cut before the first (as lmforge cuts it) and the count is not compared."""
    import torch

    from lmforge.generation.sampling import cut_at_stop

    tokenizer.padding_side = "left"
    extra = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
    out = []
    with torch.inference_mode():
        for batch in batches:
            enc = tokenizer(batch, padding=True, return_tensors="pt")
            ids = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, **extra
            )[:, enc["input_ids"].shape[1] :]
            for row in ids.tolist():
                ends = [k for k, t in enumerate(row) if t in eos_ids]
                kept = row[: ends[0]] if ends else row
                text, _ = cut_at_stop(tokenizer.decode(kept, skip_special_tokens=True), stop)
                out.append((text, None if stop else (ends[0] + 1 if ends else len(row))))
    return out


def flops(prompt_tokens: list[int], generated: list[int], body: int, output_layer: int) -> float:
    """Useful FLOPs of one pass (see the module docstring)."""
    through_body = sum(p + g - 1 for p, g in zip(prompt_tokens, generated))
    return 2 * body * through_body + 2 * output_layer * sum(generated)


def compare(model, tokenizer, prompts: list[str], size: int, params, label: str, max_load: float) -> dict:
    """Both arms on `prompts` at batch `size`, timed by the rules of timing.py; the row, or its refusal."""
    from lmforge.generation.generate import HFGenerator

    generator = HFGenerator(model, tokenizer, batch_size=size)
    order = sorted(range(len(prompts)), key=lambda i: -generator.count_tokens(prompts[i]))  # as HFGenerator sorts
    batches = [[prompts[i] for i in order[s : s + size]] for s in range(0, len(order), size)]
    outputs: dict[str, list] = {}

    def ours():
        completions = generator.generate(prompts, params)
        outputs["ours"] = [(c[0].text, None if params.stop else c[0].tokens) for c in completions]
        outputs["tokens"] = [c[0].tokens for c in completions]

    def generate():
        by_sorted = hf_generate(model, tokenizer, batches, params.max_new_tokens, generator.eos_ids, params.stop)
        result = [None] * len(order)
        for k, i in enumerate(order):
            result[i] = by_sorted[k]
        outputs["generate"] = result

    timed = timing.time_rounds({"ours": ours, "generate": generate})
    refused = [
        line
        for r in timed.rows
        if (line := timing.load_refusal(f"{label} {r.arm}", r.load_start, r.load_end, max_load))
    ]
    if refused:  # a row timed while something else competed for the cores is not written
        print("\n".join(refused), file=sys.stderr, flush=True)
        return {"refused": refused}
    summary = timing.summarize(timed.seconds())
    embedding = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - embedding  # the embedding is also the output layer
    prompt_tokens = [generator.count_tokens(p) for p in prompts]
    generated = outputs["tokens"]
    useful = flops(prompt_tokens, generated, body, embedding)
    arms = {
        arm: {**s, "tokens_per_second": sum(generated) / s["median"], "gflops_per_second": useful / s["median"] / 1e9}
        for arm, s in summary.items()
    }
    row = {
        "prompts": len(prompts),
        "stop": list(params.stop),
        "generated_tokens": sum(generated),
        "prompt_tokens": sum(prompt_tokens),
        "useful_gflop": useful / 1e9,
        "arms": arms,
        "ours_over_generate": summary["generate"]["median"] / summary["ours"]["median"],
        "identical_rows": sum(a == b for a, b in zip(outputs["ours"], outputs["generate"])),
        "order": timed.order(),
        "loads": [(r.arm, r.load_start, r.load_end) for r in timed.rows],
        "texts": [t for t, _ in outputs["ours"]],
    }
    print(
        f"{label}: ours {arms['ours']['tokens_per_second']:.1f} tokens/s ({arms['ours']['gflops_per_second']:.1f} "
        f"GFLOP/s), generate {arms['generate']['tokens_per_second']:.1f}; ours/generate "
        f"{row['ours_over_generate']:.2f}x, {row['identical_rows']}/{len(prompts)} rows identical",
        file=sys.stderr,
        flush=True,
    )
    return row


def dtype_worker(
    dtype: str, n_prompts: int, batch1_prompts: int, max_new_tokens: int, sizes: list[int], max_load: float
) -> dict:
    import torch

    from lmforge.generation.sampling import SamplingParams
    from lmforge.models.causal_lm import load_causal_lm
    from lmforge.tasks import load_task

    peak_start = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    model, tokenizer = load_causal_lm(MODEL, dtype=dtype)
    resident_after_load = memory_mb("VmRSS")
    peak_reset = reset_peak_memory()
    prompts = [p.prompt for p in load_task("gsm8k").problems("dev", limit=n_prompts, shots=0)]
    greedy = SamplingParams(max_new_tokens=max_new_tokens)
    rows = {}
    for size in sizes:
        some = prompts[:batch1_prompts] if size == 1 else prompts
        rows[str(size)] = compare(model, tokenizer, some, size, greedy, f"{dtype} batch {size}", max_load)
    # Rows that end early: a stop string ends most answers before the token limit; lmforge drops a
    # finished row from the batch, transformers keeps computing it until the whole batch is done.
    stopping = SamplingParams(max_new_tokens=2 * max_new_tokens, stop=(STOP,))
    size = max(sizes)
    early = compare(model, tokenizer, prompts, size, stopping, f"{dtype} batch {size}, stop {STOP!r}", max_load)
    peak_end = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    return {
        "dtype": dtype,
        "matmul_gflops": {d: {"start": peak_start[d], "end": peak_end[d]} for d in peak_start},
        "parameters": {
            "body": sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel(),
            "embedding_and_output_layer": model.get_input_embeddings().weight.numel(),
        },
        "resident_mb_after_load": resident_after_load,
        "resident_mb_peak_generating": memory_mb("VmHWM") if peak_reset else None,
        "threads": torch.get_num_threads(),
        "batches": rows,
        "early_stop": {"batch_size": size, "max_new_tokens": 2 * max_new_tokens, **early},
    }


def sweep(
    dtypes: list[str], n_prompts: int, batch1_prompts: int, max_new_tokens: int, sizes: list[int], max_load: float
) -> dict:
    """Each dtype in its own process (this file run with --dtype-worker), then the comparisons."""
    per_dtype = {}
    for dtype in dtypes:
        command = [sys.executable, __file__, "--dtype-worker", dtype, "--prompts", str(n_prompts)]
        command += ["--batch1-prompts", str(batch1_prompts), "--tokens", str(max_new_tokens)]
        command += ["--sizes", *map(str, sizes), "--max-load", str(max_load)]
        # the tokenizer's own thread pool would add threads beyond torch's two to the load being checked
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"throughput worker for {dtype} failed (exit {done.returncode})")
        per_dtype[dtype] = json.loads(done.stdout)
    out = {
        "model": MODEL,
        "prompts": n_prompts,
        "batch1_prompts": batch1_prompts,
        "max_new_tokens": max_new_tokens,
        "batch_sizes": sizes,
        "max_load": max_load,
        "dtypes": per_dtype,
    }
    if {"float32", "bfloat16"} <= set(per_dtype):
        full, half = per_dtype["float32"]["batches"], per_dtype["bfloat16"]["batches"]
        out["bfloat16_rows_equal_to_float32"] = {
            size: sum(a == b for a, b in zip(full[size]["texts"], half[size]["texts"]))
            for size in full
            if "texts" in full[size] and "texts" in half.get(size, {})
        }
    print(table(out))
    return out


def table(out: dict) -> str:
    """The markdown table of a sweep, each number straight from `out` (RESULTS.md shows this table)."""
    lines = [
        "| dtype | batch | prompts | tokens | lmforge tokens/s (min-max) | generate tokens/s | lmforge / generate "
        "| identical rows | useful GFLOP/s | of float32 peak | of own dtype's peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, worker in out["dtypes"].items():
        peak = {d: statistics.median(v.values()) for d, v in worker["matmul_gflops"].items()}
        rows = [(size, row) for size, row in worker["batches"].items()]
        early = worker["early_stop"]
        rows.append((f"{early['batch_size']}, stop", early))
        for size, row in rows:
            if "refused" in row:
                lines.append(f"| {dtype} | {size} | refused: load above --max-load |" + " |" * 8)
                continue
            ours, theirs = row["arms"]["ours"], row["arms"]["generate"]
            tokens = row["generated_tokens"]
            spread = f"{tokens / ours['max']:.1f}-{tokens / ours['min']:.1f}"
            flops = ours["gflops_per_second"]
            lines.append(
                f"| {dtype} | {size} | {row['prompts']} | {tokens} | {ours['tokens_per_second']:.1f} ({spread}) | "
                f"{theirs['tokens_per_second']:.1f} | {row['ours_over_generate']:.2f} | "
                f"{row['identical_rows']}/{row['prompts']} | {flops:.1f} | {flops / peak['float32']:.0%} | "
                f"{flops / peak[dtype]:.0%} |"
            )
    for dtype, worker in out["dtypes"].items():
        peaks = ", ".join(f"{d} {v['start']:.0f} / {v['end']:.0f}" for d, v in worker["matmul_gflops"].items())
        loaded, peak_mb = worker["resident_mb_after_load"], worker["resident_mb_peak_generating"]
        lines.append(
            f"\n{dtype} process: matmul peak GFLOP/s at start / end: {peaks}; resident after loading "
            f"{loaded:.0f} MB, peak while generating {peak_mb:.0f} MB"
        )
    if "bfloat16_rows_equal_to_float32" in out:
        same = ", ".join(f"batch {k}: {v}" for k, v in out["bfloat16_rows_equal_to_float32"].items())
        lines.append(f"\nbfloat16 completions equal to float32 ones: {same}")
    return "\n".join(lines)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="one dtype's throughput rows, as JSON on stdout")
    parser.add_argument("--dtype-worker", required=True, choices=["float32", "bfloat16"])
    parser.add_argument("--prompts", type=int, required=True)
    parser.add_argument("--batch1-prompts", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    parser.add_argument("--max-load", type=float, required=True)
    args = parser.parse_args()
    result = dtype_worker(args.dtype_worker, args.prompts, args.batch1_prompts, args.tokens, args.sizes, args.max_load)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
