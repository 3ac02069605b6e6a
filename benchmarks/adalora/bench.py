"""Benchmark AdaLoRA (Zhang et al. 2023) against LoRA at the same final budget, peft's AdaLoRA and full
fine-tuning, on MiniLM with SST-2 and TREC-6 (dev carved from train; the same carve for every row).

Rows, all adapting the same matrices (query, key, value, attention output, both feed-forward layers):
  lora_r2 / lora_r8                LoRA r=2 / r=8 (alpha = 2r)
  adalora_r2 / adalora_r8          lmforge AdaLoRA, init_r 3 -> target_r 2 / init_r 12 -> target_r 8
  peft_adalora_r2 / _r8            peft's AdaLoRA, same settings, `update_and_allocate` called after every
                                   optimizer step, its orthogonal regulariser (gamma 0.1) added to the loss
  full                             full fine-tuning (lr 5e-5, the finetune recipe's)
Every row runs through the same lmforge loop (same data order, schedule, evaluation); only the adapter
differs. Each run is a fresh process (`--job`), so peak memory is per run.

Stages:
  sweep    learning rate of each lmforge LoRA and AdaLoRA row, seed 1, on TREC-6 dev (--sweep-on): AdaLoRA's
           start from Lambda = 0 needs a higher rate than LoRA, so one shared rate would be unfair. peft's
           AdaLoRA runs at lmforge AdaLoRA's rate (the same settings). The best rate per row is used for
  quality  seeds 2, 3, 4 (not the sweep's seed): accuracy mean and sample std, final adapter parameters
  timing   seconds per optimizer step, each row alone on the machine, rows rotated over rounds; ratios to
           lmforge LoRA at the same budget and to peft's AdaLoRA; peak memory
Profiles:
  quick    TREC-6 only, one epoch, one seed, no sweep (fixed rates, QUICK_LRS), schedule scaled to the
           shorter run; about 15 minutes on the 2-core CPU machine
  full     both datasets, 3 epochs, sweep + 3 seeds + timing; meant for a GPU (--workers runs jobs
           in parallel there; timing always runs one job at a time)

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adalora/bench.py --profile quick
  # SST-2's quality stage on the CPU: one epoch (217 steps) with the schedule scaled to it, rates from
  # the TREC-6 sweep; its runs are named quality_1ep-* and its results stored under "full_1ep"
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adalora/bench.py --profile full --stages sweep quality \
      --datasets sst2 --tag 1ep --quality-set train.epochs=1 adalora.tinit=20 adalora.tfinal=70 adalora.deltaT=5
  HF_HUB_OFFLINE=1 python benchmarks/adalora/bench.py --profile full --workers 12 --model /path/to/minilm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "runs"  # one result JSON (committed: a rerun reuses it) and log per run; --work moves it
RUNS = Path(os.environ.get("TMPDIR", "/tmp")) / "lmforge-adalora-bench"  # run folders, removed after each run
TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
TARGET_LIST = "[" + ",".join(TARGETS) + "]"
ROWS = {
    "lora_r2": ("lora", [f"lora.target_modules={TARGET_LIST}", "lora.r=2", "lora.alpha=4"]),
    "adalora_r2": ("adalora", ["adalora.init_r=3", "adalora.target_r=2"]),
    "peft_adalora_r2": ("peft", ["adalora.init_r=3", "adalora.target_r=2"]),
    "lora_r8": ("lora", [f"lora.target_modules={TARGET_LIST}", "lora.r=8", "lora.alpha=16"]),
    "adalora_r8": ("adalora", ["adalora.init_r=12", "adalora.target_r=8"]),
    "peft_adalora_r8": ("peft", ["adalora.init_r=12", "adalora.target_r=8"]),
    "full": ("finetune", ["train.lr=5e-5"]),
}
SWEPT_ROWS = ["lora_r2", "adalora_r2", "lora_r8", "adalora_r8"]
SWEEP_LRS = {"lora": [5e-4, 1e-3, 2e-3, 5e-3], "adalora": [2e-3, 5e-3, 1e-2, 2e-2]}  # peft's AdaLoRA: "adalora"
QUICK_LRS = {"lora_r2": 2e-3, "lora_r8": 1e-3, "adalora_r2": 5e-3, "adalora_r8": 5e-3}  # set before any sweep ran
QUICK_SCHEDULE = ["train.epochs=1", "adalora.tinit=15", "adalora.tfinal=40", "adalora.deltaT=5"]
SETS: list[str] = []  # --set overrides, applied to every run after the profile's own
TIMING_SCHEDULE = ["train.max_steps=80", "adalora.tinit=10", "adalora.tfinal=30", "adalora.deltaT=5"]


# ---- one run, in its own process ------------------------------------------------------------------


def final_adapter_parameters(final: Path) -> int | None:
    """Adapter parameters as saved after training (LoRA: r(in + out) per matrix; AdaLoRA, trimmed to the
    kept triplets: r_k(in + out + 1)); the classifier head, trained by every row, is not counted."""
    path = final / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" in k)


def run_peft_adalora(cfg, run_dir: Path) -> dict:
    """peft's AdaLoRA in lmforge's loop: `get_peft_model` adapts the model in place, and the loop calls
    `update_and_allocate` after `optimizer.step()`, before `zero_grad`, as peft's docs ask."""
    import torch
    from peft import AdaLoraConfig, get_peft_model

    from lmforge.core.classifier_run import start_classifier_run
    from lmforge.core.data import load_task
    from lmforge.core.loop import StopSignal, total_steps

    ada = cfg.options
    holder = {}

    def adapt(model) -> None:
        peft_config = AdaLoraConfig(
            task_type="SEQ_CLS",
            init_r=ada.init_r,
            target_r=ada.target_r,
            tinit=ada.tinit,
            tfinal=ada.tfinal,
            deltaT=ada.deltaT,
            beta1=ada.beta1,
            beta2=ada.beta2,
            orth_reg_weight=ada.orth_reg_weight,
            total_step=holder["steps"],
            lora_alpha=ada.lora_alpha,
            lora_dropout=ada.lora_dropout,
            target_modules=list(ada.target_modules),
        )
        holder["peft"] = get_peft_model(model, peft_config)  # replaces layers of `model` in place

    # peft needs the total step count when the adapter is built, before lmforge's run counts it
    d = cfg.data
    task = load_task(d.train, d.eval, d.text_column, d.label_column, d.max_train_examples, d.max_eval_examples)
    holder["steps"] = total_steps(len(task.train), cfg.train)
    t = start_classifier_run(cfg, run_dir, False, adapt)
    tuner = holder["peft"].base_model
    weight = ada.orth_reg_weight

    def regularizer():  # peft's AdaLoraModel.forward adds this when the model computes its own loss
        terms = []
        for name, p in t.unwrapped.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                cov = p @ p.T if "lora_A" in name else p.T @ p
                terms.append(torch.norm(cov - torch.eye(cov.shape[0], device=cov.device), p="fro"))
        return weight * torch.stack(terms).mean()

    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate_gradients(batch, regularizer)
            t.optimizer_step(batch)
            tuner.update_and_allocate(t.state.step)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)
    return t.finish(lambda model, tokenizer, folder: holder["peft"].save_pretrained(folder))


def job(spec: dict) -> None:
    import torch

    from lmforge.cli import find_recipe, load_run_config
    from lmforge.registry import METHODS, resolve

    method, row_overrides = ROWS[spec["row"]]
    recipe_method = "adalora" if method == "peft" else method
    # schedule overrides (adalora.*) apply to the AdaLoRA rows only
    overrides = [
        o for o in row_overrides + spec["overrides"] if o.split(".")[0] in ("model", "data", "train", recipe_method)
    ]
    cfg = load_run_config(find_recipe(f"{recipe_method}/minilm_{spec['dataset']}"), overrides)
    run_dir = Path(spec["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    version = None
    if method == "peft":
        import peft

        run_peft_adalora(cfg, run_dir)
        version = peft.__version__
    else:
        resolve(METHODS[method].recipe)(cfg, run_dir, False)
    final = json.loads((run_dir / "final.json").read_text())
    result = {
        **spec,
        "lr": cfg.train.lr,
        "accuracy": final["metrics"]["accuracy"],
        "macro_f1": final["metrics"]["macro_f1"],
        "steps": final["steps"],
        "s_per_step": final["train_seconds"] / final["steps"],
        "trainable_parameters": final["trainable_parameters"],
        "final_adapter_parameters": final_adapter_parameters(run_dir / "final"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "peft": version,
    }
    allocation = run_dir / "adalora.json"
    if allocation.is_file():
        result["final_ranks"] = json.loads(allocation.read_text())["final_ranks"]
    Path(spec["out"]).write_text(json.dumps(result, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)


# ---- the comparison ---------------------------------------------------------------------------------


def spec(stage: str, row: str, dataset: str, seed: int, lr: float | None, extra: list[str], model: str | None) -> dict:
    name = f"{stage}-{dataset}-{row}-s{seed}" + (f"-lr{lr:g}" if lr is not None else "")
    overrides = [f"train.seed={seed}", "train.eval_every=1000000", "train.save_every=1000000", *extra, *SETS]
    if lr is not None:
        overrides.append(f"train.lr={lr}")
    if model:
        overrides.append(f"model.name={model}")
    return {
        "id": name,
        "stage": stage,
        "row": row,
        "dataset": dataset,
        "seed": seed,
        "overrides": overrides,
        "run_dir": str(RUNS / name),
        "out": str(WORK / f"{name}.json"),
    }


def launch(specs: list[dict], workers: int) -> list[dict]:
    """Run each spec in a fresh process (`--job`); a finished spec's result is reused on a rerun."""
    WORK.mkdir(parents=True, exist_ok=True)

    def one(s: dict) -> dict | None:
        out = Path(s["out"])
        if not out.is_file():
            with open(out.with_suffix(".log"), "w") as log:
                code = subprocess.run(
                    [sys.executable, __file__, "--job", json.dumps(s)], stdout=log, stderr=subprocess.STDOUT
                ).returncode
            if code != 0 or not out.is_file():
                print(f"FAILED {s['id']} (exit {code}): see {out.with_suffix('.log')}", flush=True)
                return None
        r = json.loads(out.read_text())
        print(f"{s['id']:<42} accuracy {r['accuracy']:.4f}  {r['s_per_step'] * 1000:7.1f} ms/step", flush=True)
        return r

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for r in pool.map(one, specs) if r is not None]


def summarize(runs: list[dict]) -> dict:
    out = {}
    for dataset in sorted({r["dataset"] for r in runs}):
        for row in ROWS:
            own = [r for r in runs if r["dataset"] == dataset and r["row"] == row]
            if not own:
                continue
            acc = [r["accuracy"] for r in own]
            out[f"{dataset}/{row}"] = {
                "seeds": [r["seed"] for r in own],
                "lr": own[0]["lr"],
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
                "accuracy_min": min(acc),
                "accuracy_max": max(acc),
                "final_adapter_parameters": own[0]["final_adapter_parameters"],
                "trainable_parameters_during_training": own[0]["trainable_parameters"],
                "s_per_step_median": statistics.median(r["s_per_step"] for r in own),
                "peak_memory_mb": max((r["peak_cuda_mb"] or r["peak_rss_mb"]) for r in own),
            }
    return out


def versus(summary: dict, field: str, combine) -> dict:
    """lmforge AdaLoRA against lmforge LoRA and peft's AdaLoRA at the same budget: combine(ours, theirs)."""
    out = {}
    for key, s in summary.items():
        dataset, row = key.split("/")
        if row.startswith("adalora_"):
            budget = row.removeprefix("adalora_")
            for other in (f"lora_{budget}", f"peft_adalora_{budget}"):
                if f"{dataset}/{other}" in summary:
                    out[f"{dataset}/{row} vs {other}"] = combine(s[field], summary[f"{dataset}/{other}"][field])
    return out


def ratios(summary: dict) -> dict:
    """Step-time ratios: ours / theirs."""
    return versus(summary, "s_per_step_median", lambda ours, theirs: ours / theirs)


def gaps(summary: dict) -> dict:
    """Accuracy differences: ours - theirs."""
    return versus(summary, "accuracy_mean", lambda ours, theirs: ours - theirs)


def print_table(title: str, summary: dict) -> None:
    print(f"\n{title}")
    print("| dataset / row | lr | accuracy mean ± std (min-max) | final adapter params | s/step | peak MB |")
    print("|---|---|---|---|---|---|")
    for key, s in summary.items():
        std = f" ± {100 * s['accuracy_std']:.2f}" if s["accuracy_std"] is not None else ""
        params = f"{s['final_adapter_parameters']:,}" if s["final_adapter_parameters"] is not None else "all"
        print(
            f"| {key} | {s['lr']:g} | {100 * s['accuracy_mean']:.2f}{std} "
            f"({100 * s['accuracy_min']:.2f}-{100 * s['accuracy_max']:.2f}) | {params} | "
            f"{s['s_per_step_median']:.4f} | {s['peak_memory_mb']:.0f} |"
        )


def provenance() -> dict:
    from lmforge.core.rundir import benchmark_provenance

    return benchmark_provenance()


def quick(args) -> dict:
    specs = []
    for row in ROWS:
        lr = QUICK_LRS.get(row.removeprefix("peft_"), None)
        specs.append(spec("quick", row, "trec6", 1, lr, QUICK_SCHEDULE, args.model))
    runs = launch(specs, 1)  # one at a time: the step times are compared
    summary = summarize(runs)
    print_table("quick profile: TREC-6, 1 epoch, seed 1", summary)
    result = {**provenance(), "runs": runs, "summary": summary, "step_time_ratios": ratios(summary)}
    for k, v in result["step_time_ratios"].items():
        print(f"step time {k}: {v:.3f}")
    return result


def full(args) -> dict:
    result = {**provenance(), "stages": args.stages, "datasets": args.datasets, "quality_set": args.quality_set}
    if "timing" in args.stages:  # one job at a time, rows rotated over rounds
        specs = []
        for r in range(args.rounds):
            order = list(ROWS)[r % len(ROWS) :] + list(ROWS)[: r % len(ROWS)]
            specs += [spec(f"timing{r}", row, "sst2", 1, None, TIMING_SCHEDULE, args.model) for row in order]
        result["timing"] = timing = summarize(launch(specs, 1))
        result["step_time_ratios"] = ratios(timing)
        print_table("timing (SST-2, 80 steps, one run at a time)", timing)
    if "sweep" not in args.stages and "quality" not in args.stages:
        return result
    # the learning-rate sweep, seed 1, on --sweep-on; needed by the quality stage, reused from earlier runs
    specs = [
        spec("sweep", row, d, 1, lr, [], args.model)
        for d in args.sweep_on
        for row in SWEPT_ROWS
        for lr in SWEEP_LRS["lora" if row.startswith("lora") else "adalora"]
    ]
    sweep = launch(specs, args.workers)
    best = {}
    for d in args.sweep_on:
        for row in SWEPT_ROWS:
            tried = [r for r in sweep if r["dataset"] == d and r["row"] == row]
            if tried:  # ties go to the lower rate
                best[f"{d}/{row}"] = max(tried, key=lambda r: (r["accuracy"], -r["lr"]))["lr"]
    result["sweep"] = [{k: r[k] for k in ("dataset", "row", "lr", "accuracy")} for r in sweep]
    result["best_lr"] = best
    print("best learning rates:", json.dumps(best))
    if "quality" in args.stages:  # the best rate of the sweep (on the same dataset if swept), fresh seeds

        def rate(d: str, row: str) -> float | None:
            if row == "full":
                return None
            row = row.removeprefix("peft_")  # peft's AdaLoRA runs at lmforge AdaLoRA's rate: the same settings
            return best.get(f"{d}/{row}", best.get(f"{args.sweep_on[0]}/{row}"))

        stage = "quality" + (f"_{args.tag}" if args.tag else "")  # a tagged stage never reuses untagged runs
        specs = [
            spec(stage, row, d, seed, rate(d, row), args.quality_set, args.model)
            for d in args.datasets
            for seed in args.seeds
            for row in ROWS
        ]
        result["quality"] = quality = summarize(launch(specs, args.workers))
        print_table(f"quality: seeds {args.seeds}, learning rates from the seed-1 sweep", quality)
        result["accuracy_gaps"] = gaps(quality)
        for k, v in result["accuracy_gaps"].items():
            print(f"accuracy {k}: {100 * v:+.2f} points")
    for k, v in result.get("step_time_ratios", {}).items():
        print(f"step time {k}: {v:.3f}")
    return result


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["quick", "full"], default="quick")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="model name or folder (default: the recipes' minilm)")
    parser.add_argument("--workers", type=int, default=1, help="jobs run in parallel (sweep and quality only)")
    parser.add_argument("--datasets", nargs="+", default=["sst2", "trec6"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds")
    parser.add_argument(
        "--stages", nargs="+", choices=["timing", "sweep", "quality"], default=["timing", "sweep", "quality"]
    )
    parser.add_argument("--sweep-on", nargs="+", default=["trec6"], help="datasets of the learning-rate sweep")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--work", type=Path, default=WORK, help="folder for each run's result and log")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run (e.g. a smoke test)")
    parser.add_argument(
        "--quality-set", nargs="*", default=[], help="key=value overrides for the quality stage only (needs --tag)"
    )
    parser.add_argument("--tag", default="", help="names the quality stage's runs, e.g. 1ep for a shorter schedule")
    args = parser.parse_args()
    if args.quality_set and not args.tag:
        parser.error("--quality-set needs --tag, so its runs are not mistaken for the default schedule's")
    SETS.extend(args.set)
    WORK = args.work
    if args.job:
        job(json.loads(args.job))
        return
    result = quick(args) if args.profile == "quick" else full(args)
    from lmforge.core.rundir import merge_benchmark_result

    merge_benchmark_result(args.results, args.profile + (f"_{args.tag}" if args.tag else ""), result)


if __name__ == "__main__":
    main()
