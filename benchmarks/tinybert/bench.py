"""Benchmark TinyBERT (Jiao et al. 2020) on SST-2 dev: teacher vs student, and the paper's ablations.

--part speed    teacher (MiniLM classifier, 22.7 M parameters) and student (the recipe's 3 layers x 192
                hidden) side by side in one process, rounds alternating: latency at batch 1 (median over
                single dev sentences) and throughput at batch 32 (dev sentences per second). Weights do
                not change the speed, so no training is needed. CPU unless CUDA is visible.
--part quality  the chain of runs, each a real `lmforge run` in its own process, reused when its
                final.json exists (so an interrupted benchmark picks up where it stopped):
                  teacher          finetune/minilm_sst2
                  general          tinybert/general_minilm (the student's general distillation)
                  tinybert         tinybert/minilm_sst2: from `general`, augmented data, intermediate
                                   layers then prediction layer
                  no_augmentation  the same without the augmented copies
                  no_general       the same from a random student (no general distillation)
                  prediction_only  no intermediate-layer losses: plain knowledge distillation
                  labels_only      the `general` student fine-tuned on the labels alone (no teacher)
                each student row over --seeds. Reports accuracy mean and sample std, the share of the
                teacher's accuracy, parameters.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tinybert/bench.py --part speed
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tinybert/bench.py --part quality --seeds 1 2 3
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
ROOT = HERE.parents[1]
ROWS = {
    "tinybert": [],
    "no_augmentation": ["tinybert.augment=false"],
    "no_general": ["tinybert.init_from="],
    "prediction_only": ["tinybert.intermediate_share=0"],
}


def provenance() -> dict:
    from lmforge.core.rundir import benchmark_provenance

    return benchmark_provenance()


# ---- speed --------------------------------------------------------------------------------------


def speed(rounds: int, singles: int, model_name: str) -> dict:
    import torch

    from lmforge.core.classify import collate, encode
    from lmforge.core.data import load_examples
    from lmforge.core.loop import count_parameters
    from lmforge.core.models import load_classifier
    from lmforge.methods.tinybert.config import StudentConfig
    from lmforge.methods.tinybert.student import new_student

    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher, tokenizer = load_classifier(model_name, ["0", "1"])
    student = new_student(teacher.config, StudentConfig(), ["0", "1"], 0).model
    models = {"teacher": teacher.to(device).eval(), "student": student.to(device).eval()}
    ids = encode(tokenizer, load_examples("sst2:dev").texts, 64)
    pad = tokenizer.pad_token_id
    ordered = sorted(ids, key=len)
    batches = [collate(ordered[i : i + 32], pad, device) for i in range(0, len(ordered), 32)]
    singles_in = [collate([x], pad, device) for x in ids[:singles]]
    timings: dict[str, dict[str, list[float]]] = {name: {"latency": [], "throughput": []} for name in models}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for model in models.values():  # warm up
            model(**batches[0])
        for r in range(rounds):
            for name in list(models) if r % 2 == 0 else list(models)[::-1]:
                model = models[name]
                for inputs in singles_in:
                    sync()
                    start = time.perf_counter()
                    model(**inputs)
                    sync()
                    timings[name]["latency"].append(time.perf_counter() - start)
                sync()
                start = time.perf_counter()
                for inputs in batches:
                    model(**inputs)
                sync()
                timings[name]["throughput"].append(len(ids) / (time.perf_counter() - start))
    out = {}
    for name, model in models.items():
        out[name] = {
            "parameters": count_parameters(model)[1],
            "latency_ms_batch1": 1000 * statistics.median(timings[name]["latency"]),
            "throughput_per_s_batch32": statistics.median(timings[name]["throughput"]),
        }
    out["throughput_ratio"] = out["student"]["throughput_per_s_batch32"] / out["teacher"]["throughput_per_s_batch32"]
    out["latency_ratio"] = out["teacher"]["latency_ms_batch1"] / out["student"]["latency_ms_batch1"]
    print(f"\nspeed on {device}, {len(ids)} SST-2 dev sentences, {rounds} rounds")
    print("| model | parameters | latency, batch 1 (ms) | throughput, batch 32 (sentences/s) |")
    print("|---|---|---|---|")
    for name in models:
        s = out[name]
        print(f"| {name} | {s['parameters']:,} | {s['latency_ms_batch1']:.2f} | {s['throughput_per_s_batch32']:.0f} |")
    print(f"student / teacher throughput {out['throughput_ratio']:.2f}x; latency {out['latency_ratio']:.2f}x lower")
    return {**provenance(), **out}


# ---- quality ------------------------------------------------------------------------------------


def lmforge_run(run_dir: Path, recipe: str, *overrides: str) -> dict:
    """`lmforge run RECIPE OVERRIDES` in its own process, unless run_dir holds a finished run; a run
    that was interrupted is resumed. Overrides of another method's section are dropped."""
    method = recipe.split("/")[0]
    overrides = tuple(o for o in overrides if o.split(".")[0] in ("model", "data", "train", method))
    if not (run_dir / "final.json").is_file():
        resuming = (run_dir / "config.yaml").is_file()
        command = [sys.executable, "-m", "lmforge", "run", recipe, *(["--resume"] if resuming else overrides)]
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            done = subprocess.run([*command, "--run-dir", str(run_dir)], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{recipe} {' '.join(overrides)} failed (exit {done.returncode}); see {log}")
    print(f"done: {run_dir.name}", flush=True)
    return json.loads((run_dir / "final.json").read_text())


def quality(work: Path, seeds: list[int], sets: list[str]) -> dict:
    teacher_dir, general_dir = work / "teacher", work / "general"
    teacher = lmforge_run(teacher_dir, "finetune/minilm_sst2", *sets)  # the row's own overrides come last and win
    general = lmforge_run(general_dir, "tinybert/general_minilm", *sets)
    chain = [f"tinybert.teacher={teacher_dir}", f"tinybert.init_from={general_dir}"]
    runs = []
    for seed in seeds:
        for row, extra in ROWS.items():
            final = lmforge_run(
                work / f"{row}-s{seed}", "tinybert/minilm_sst2", *sets, *chain, f"train.seed={seed}", *extra
            )
            runs.append(
                {
                    "row": row,
                    "seed": seed,
                    "accuracy": final["metrics"]["accuracy"],
                    "steps": final["steps"],
                    "train_seconds": final["train_seconds"],
                }
            )
        # the general student on the labels alone: full fine-tuning from its folder, no teacher
        student_folder = f"model.name={general_dir / 'final'}"
        final = lmforge_run(
            work / f"labels_only-s{seed}",
            "finetune/minilm_sst2",
            *sets,
            student_folder,
            f"train.seed={seed}",
            "train.lr=5e-4",
        )
        runs.append(
            {
                "row": "labels_only",
                "seed": seed,
                "accuracy": final["metrics"]["accuracy"],
                "steps": final["steps"],
                "train_seconds": final["train_seconds"],
            }
        )
    teacher_accuracy = teacher["metrics"]["accuracy"]
    summary = {}
    for row in [*ROWS, "labels_only"]:
        acc = [r["accuracy"] for r in runs if r["row"] == row]
        mean = statistics.fmean(acc)
        summary[row] = {
            "seeds": len(acc),
            "accuracy_mean": mean,
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
            "share_of_teacher": mean / teacher_accuracy,
        }
    print(
        f"\nSST-2 dev: teacher (the finetune recipe) accuracy {100 * teacher_accuracy:.2f}; "
        f"general stage held-out loss {general['metrics']['held_out_loss']:.4f}"
    )
    print("| row | accuracy mean ± std | share of teacher |")
    print("|---|---|---|")
    for row, s in summary.items():
        std = f" ± {100 * s['accuracy_std']:.2f}" if s["accuracy_std"] is not None else ""
        print(f"| {row} | {100 * s['accuracy_mean']:.2f}{std} | {100 * s['share_of_teacher']:.1f}% |")
    return {
        **provenance(),
        "teacher_accuracy": teacher_accuracy,
        "general": general,
        "runs": runs,
        "summary": summary,
        "overrides": sets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "quality"], required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=4, help="speed: alternating rounds")
    parser.add_argument("--singles", type=int, default=200, help="speed: sentences timed at batch 1 per round")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="quality: the runs' folders")
    parser.add_argument("--set", nargs="*", default=[], help="quality: key=value overrides for every run")
    parser.add_argument("--model", default="minilm", help="speed: the teacher model (a name or a folder)")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    result = (
        speed(args.rounds, args.singles, args.model)
        if args.part == "speed"
        else quality(args.work, args.seeds, args.set)
    )
    from lmforge.core.rundir import merge_benchmark_result

    merge_benchmark_result(args.results, args.part, result)


if __name__ == "__main__":
    main()
