"""TinyBERT's `--part speed`: the teacher and the student side by side in one process, latency at batch 1
and throughput at batch 32, timed by benchmarks/timing.py's rules (bench.py's docstring says how)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared timing rules
import timing  # noqa: E402
from records import benchmark_provenance  # noqa: E402

ARMS = ["teacher batch 1", "student batch 1", "teacher batch 32", "student batch 32"]


def speed(rounds: int, singles: int, model_name: str, max_load: float) -> dict | None:
    """Teacher and student timed by timing.time_rounds; None when every call was refused for load."""
    import torch

    from lmforge.core.loop import count_parameters
    from lmforge.data.classify import collate, encode
    from lmforge.data.files import load_examples
    from lmforge.methods.tinybert.config import StudentConfig
    from lmforge.methods.tinybert.student import new_student
    from lmforge.models.classifier import load_classifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher, tokenizer = load_classifier(model_name, ["0", "1"])
    student = new_student(teacher.config, StudentConfig(), ["0", "1"], 0).model
    models = {"teacher": teacher.to(device).eval(), "student": student.to(device).eval()}
    ids = encode(tokenizer, load_examples("sst2:dev").texts, 64)
    pad = tokenizer.pad_token_id
    ordered = sorted(ids, key=len)
    batches = [collate(ordered[i : i + 32], pad, device) for i in range(0, len(ordered), 32)]
    singles_in = [collate([x], pad, device) for x in ids[:singles]]

    def clock() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def arm(name: str):
        model = models[name.split()[0]]

        def batch1() -> float:  # the median latency of the single sentences, each timed alone
            latencies = []
            for inputs in singles_in:
                started = clock()
                model(**inputs)
                latencies.append(clock() - started)
            return statistics.median(latencies)

        def batch32() -> float:  # one pass over the dev set in batches of 32
            started = clock()
            for inputs in batches:
                model(**inputs)
            return clock() - started

        return batch1 if name.endswith(" 1") else batch32

    with torch.inference_mode():
        timed = timing.time_rounds({name: arm(name) for name in ARMS}, rounds)
    refused = []
    for r in timed.rows:
        line = timing.load_refusal(f"speed round {r.round + 1} {r.arm}", r.load_start, r.load_end, max_load)
        if line:
            print(line, flush=True)
            refused.append(line)
    summary = timing.summarize(timed.seconds(max_load))
    if not summary:
        return None
    out: dict = {"device_used": device, "sentences": len(ids), "singles": len(singles_in)}
    for name, model in models.items():
        row: dict = {"parameters": count_parameters(model)[1]}
        if f"{name} batch 1" in summary:
            row["latency_ms_batch1"] = 1000 * summary[f"{name} batch 1"]["median"]
        if f"{name} batch 32" in summary:
            row["throughput_per_s_batch32"] = len(ids) / summary[f"{name} batch 32"]["median"]
        out[name] = row
    # student / teacher throughput = teacher seconds / student seconds over the same sentences
    ratios = timing.median_ratios(summary, [(f"teacher batch {n}", f"student batch {n}") for n in (32, 1)])
    out["throughput_ratio"] = ratios.get("teacher batch 32 / student batch 32")
    out["latency_ratio"] = ratios.get("teacher batch 1 / student batch 1")
    out["timing"] = {
        "rounds": rounds,
        "warmup_rounds": 1,
        "max_load": max_load,
        "seconds": summary,  # per arm: rounds, median, min, max, q1, q3, iqr (batch 1: per sentence)
        "order": timed.order(),
        "loads": [{"round": r.round + 1, "arm": r.arm, "start": r.load_start, "end": r.load_end} for r in timed.rows],
        "refused": refused,
    }
    print(f"\nspeed on {device}, {len(ids)} SST-2 dev sentences, {rounds} rounds after a warm-up round")
    print("\n".join(timing.format_summary(summary, unit=1e-3, unit_name="ms")))
    print("| model | parameters | latency, batch 1 (ms) | throughput, batch 32 (sentences/s) |")
    print("|---|---|---|---|")
    for name in models:
        latency, throughput = out[name].get("latency_ms_batch1"), out[name].get("throughput_per_s_batch32")
        latency_text = f"{latency:.2f}" if latency else "refused"
        throughput_text = f"{throughput:.0f}" if throughput else "refused"
        print(f"| {name} | {out[name]['parameters']:,} | {latency_text} | {throughput_text} |")
    named = {"student / teacher throughput": "throughput_ratio", "teacher / student latency": "latency_ratio"}
    for what, key in named.items():
        if out[key] is not None:
            print(f"{what}: {out[key]:.2f}x (ratio of medians)")
    return {**benchmark_provenance(), **out}
