"""Benchmark AdaLoRA (Zhang et al. 2023) against LoRA at the same final budget, peft's AdaLoRA and full
fine-tuning, on MiniLM with TREC-6 (and SST-2 on a GPU), every arm tuned the same way.

Arms, all adapters on the same 36 matrices (query, key, value, attention output, both feed-forward
layers) and all at the same scaling alpha / r = 2 (LoRA: alpha = 2r; AdaLoRA: lora_alpha = 2 init_r,
the update P Lambda Q x lora_alpha / init_r, as the official code and peft scale it):
  lora_r2 / lora_r8              LoRA r = 2 / 8
  adalora_r2 / adalora_r8        lmforge AdaLoRA, init_r 3 -> target_r 2 / init_r 12 -> target_r 8
  peft_adalora_r2 / _r8          peft's AdaLoRA, same settings, `update_and_allocate` after every optimizer
                                 step, its own (unsquared) orthogonal regulariser, gamma 0.1
  full                           full fine-tuning
Every arm runs through the same lmforge loop (same data order, schedule, evaluation); only the adapter
differs. Each run is a fresh process (`--job`), so peak memory is per run.

Tuning, the same for every arm: a learning-rate grid of the same size and shape (base x 1, 2, 4, 10;
the base per family, since AdaLoRA starts from Lambda = 0 and full fine-tuning moves every weight),
seed 1, trained on the training split minus a validation split carved from it (seeded shuffle, recorded
with the files' sha256) and scored on that validation split. The reported split (the builtin dev; no
test split is shipped for TREC-6 or SST-2) is never used to choose anything.

Stages:
  sweep    every arm x every rate of its grid, seed 1: train on fit, score on validation
  quality  seeds 2, 3, 4 at each arm's best rate: train on fit, report on dev
  timing   seconds per optimizer step, one run at a time (GPU profile): a warm-up round that is not
           counted, then --rounds (at least 3) rounds with the arms interleaved, median and spread per arm
           (benchmarks/timing.py). It measures afresh on every run; --reuse reads the stored rows instead and
           says which, with their date and commit. A row timed with the 1-minute load average above
           --max-load is not written.
A sweep or quality run's result JSON stores the settings that made it; a rerun reuses a result only when its
settings are identical, and stops with one line naming the run otherwise.

Profiles:
  cpu      TREC-6; sweep at ONE epoch (the AdaLoRA schedule scaled to it), quality at three epochs;
           about 2 hours on the 2-core CPU machine
  gpu      TREC-6 and SST-2, sweep and quality at three epochs, timing; --workers runs jobs in parallel
  smoke    tiny-bert on 96 TREC-6 questions, a few steps, two rates per arm: checks the script end to end

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adalora/bench.py --profile cpu
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adalora/bench.py --profile smoke --work /tmp/adalora-smoke \
      --results /tmp/adalora-smoke/results.json
  HF_HUB_OFFLINE=1 python benchmarks/adalora/bench.py --profile gpu --workers 12 --model /path/to/minilm
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared timing rules
import timing  # noqa: E402
from adalora.job import job  # noqa: E402  (one run, in its own process)

WORK = HERE / "runs" / "equal_tuning"  # the carved data, one result JSON (committed) and log per run
RUNS = Path(os.environ.get("TMPDIR", "/tmp")) / "lmforge-adalora-bench"  # run folders, removed after each run
TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
TARGET_LIST = "[" + ",".join(TARGETS) + "]"
SCALING = 2.0  # alpha / r of every adapter arm
ROWS = {  # arm -> (recipe method, family of its learning-rate grid, overrides)
    "lora_r2": ("lora", "lora", [f"lora.target_modules={TARGET_LIST}", "lora.r=2", "lora.alpha=4"]),
    "adalora_r2": ("adalora", "adalora", ["adalora.init_r=3", "adalora.target_r=2", "adalora.lora_alpha=6"]),
    "peft_adalora_r2": ("peft", "adalora", ["adalora.init_r=3", "adalora.target_r=2", "adalora.lora_alpha=6"]),
    "lora_r8": ("lora", "lora", [f"lora.target_modules={TARGET_LIST}", "lora.r=8", "lora.alpha=16"]),
    "adalora_r8": ("adalora", "adalora", ["adalora.init_r=12", "adalora.target_r=8", "adalora.lora_alpha=24"]),
    "peft_adalora_r8": ("peft", "adalora", ["adalora.init_r=12", "adalora.target_r=8", "adalora.lora_alpha=24"]),
    "full": ("finetune", "full", []),
}
GRID_SHAPE = [1, 2, 4, 10]  # every arm's grid: its base rate times these
GRID_BASE = {"lora": 5e-4, "adalora": 5e-3, "full": 2e-5}
VALIDATION = {"seed": 20261207, "size": {"trec6": 500, "sst2": 872}}  # SST-2: as large as its dev split
ONE_EPOCH_SCHEDULE = ["train.epochs=1", "adalora.tinit=15", "adalora.tfinal=40", "adalora.deltaT=5"]
TIMING_SCHEDULE = ["train.max_steps=80", "adalora.tinit=10", "adalora.tfinal=30", "adalora.deltaT=5"]
PROFILES = {
    "cpu": {"datasets": ["trec6"], "sweep": ONE_EPOCH_SCHEDULE, "quality": [], "grid": 4, "timing": False},
    "gpu": {"datasets": ["trec6", "sst2"], "sweep": [], "quality": [], "grid": 4, "timing": True},
    "smoke": {
        "datasets": ["trec6"],
        "sweep": ["train.max_steps=12", "adalora.tinit=2", "adalora.tfinal=4", "adalora.deltaT=2"],
        "quality": ["train.max_steps=12", "adalora.tinit=2", "adalora.tfinal=4", "adalora.deltaT=2"],
        "grid": 2,
        "timing": False,
        "model": "tiny-bert",
        "set": ["data.max_train_examples=96", "data.max_eval_examples=48", "train.batch_size=8"],
        "validation_size": 48,
        "seeds": [2],
    },
}


# ---- data: the validation split carved from the training split --------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def carve_validation(dataset: str, size: int) -> dict:
    """Write <dataset>-fit.jsonl and <dataset>-validation.jsonl: `size` rows of the builtin training split,
    picked by a seeded shuffle, held out for choosing the learning rate; the rest is trained on."""
    from lmforge.data.files import load_examples

    train = load_examples(f"{dataset}:train")
    order = list(range(len(train.texts)))
    random.Random(VALIDATION["seed"]).shuffle(order)
    held_out = set(order[:size])
    files = {}
    for part, keep in (("fit", lambda i: i not in held_out), ("validation", lambda i: i in held_out)):
        path = WORK / "data" / f"{dataset}-{part}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"text": t, "label": y} for i, (t, y) in enumerate(zip(train.texts, train.labels)) if keep(i)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[part] = {"path": str(path), "rows": len(rows), "sha256": sha256(path)}
    return {"from": f"{dataset}:train", "seed": VALIDATION["seed"], **files}


# ---- the comparison ---------------------------------------------------------------------------------


def grid(row: str, size: int) -> list[float]:
    base = GRID_BASE[ROWS[row][1]]
    return [float(f"{base * k:.3g}") for k in GRID_SHAPE[:size]]


def spec(stage: str, row: str, dataset: str, seed: int, lr: float, data: dict, eval_on: str, extra: list[str]) -> dict:
    """One run. `settings` is everything that decides its result; a stored result is reused only when its
    settings are the same."""
    name = f"{stage}-{dataset}-{row}-s{seed}-lr{lr:g}"
    fixed = ["train.eval_every=1000000", "train.save_every=1000000", f"train.seed={seed}", f"train.lr={lr}"]
    eval_spec = data["validation"]["path"] if eval_on == "validation" else f"{dataset}:dev"
    overrides = [*ROWS[row][2], *fixed, *extra, f"data.train={data['fit']['path']}", f"data.eval={eval_spec}"]
    settings = {
        "row": row,
        "dataset": dataset,
        "seed": seed,
        "lr": lr,
        "overrides": [o for o in overrides if not o.startswith(("data.train=", "data.eval="))],
        "train_data": data["fit"]["sha256"],
        "eval_data": data["validation"]["sha256"] if eval_on == "validation" else f"{dataset}:dev",
    }
    return {
        "id": name,
        "stage": stage,
        "row": row,
        "dataset": dataset,
        "seed": seed,
        "evaluated_on": eval_on,
        "overrides": overrides,
        "settings": settings,
        "run_dir": str(RUNS / name),
        "out": str(WORK / f"{name}.json"),
    }


def launch(specs: list[dict], workers: int) -> list[dict]:
    """Run each spec in a fresh process (`--job`); a stored result is reused only if made with the same
    settings. Every stored result is checked before anything runs."""
    for s in specs:
        out = Path(s["out"])
        if out.is_file() and json.loads(out.read_text()).get("settings") != s["settings"]:
            sys.exit(f"bench.py: {out} was made with other settings; move it away or pass another --work")

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
        print(f"{s['id']:<48} accuracy {r['accuracy']:.4f}  {r['s_per_step'] * 1000:7.1f} ms/step", flush=True)
        return r

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for r in pool.map(one, specs) if r is not None]


def summarize(runs: list[dict]) -> dict:
    out = {}
    for dataset in sorted({r["dataset"] for r in runs}):
        for row in ROWS:
            own = sorted((r for r in runs if r["dataset"] == dataset and r["row"] == row), key=lambda r: r["seed"])
            if not own:
                continue
            acc = [r["accuracy"] for r in own]
            out[f"{dataset}/{row}"] = {
                "seeds": [r["seed"] for r in own],
                "lr": own[0]["lr"],
                "scaling": None if row == "full" else SCALING,
                "accuracy": acc,
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
                "final_adapter_parameters": [r["final_adapter_parameters"] for r in own],  # one per seed
                "trainable_parameters_during_training": own[0]["trainable_parameters"],
                "s_per_step_median": statistics.median(r["s_per_step"] for r in own),
                "peak_memory_mb": max((r["peak_cuda_mb"] or r["peak_rss_mb"]) for r in own),
            }
    return out


def versus(summary: dict, field: str, combine) -> dict:
    """lmforge AdaLoRA against LoRA and peft's AdaLoRA at the same budget: combine(ours, theirs)."""
    out = {}
    for key, s in summary.items():
        dataset, row = key.split("/")
        if row.startswith("adalora_"):
            budget = row.removeprefix("adalora_")
            for other in (f"lora_{budget}", f"peft_adalora_{budget}"):
                if f"{dataset}/{other}" in summary:
                    out[f"{dataset}/{row} vs {other}"] = combine(s[field], summary[f"{dataset}/{other}"][field])
    return out


def print_table(title: str, summary: dict) -> None:
    print(f"\n{title}")
    print("| dataset / arm | lr | scaling | accuracy per seed | mean ± std | final adapter params per seed | s/step |")
    print("|---|---|---|---|---|---|---|")
    for key, s in summary.items():
        std = f" ± {100 * s['accuracy_std']:.2f}" if s["accuracy_std"] is not None else ""
        params = " / ".join("all" if p is None else f"{p:,}" for p in s["final_adapter_parameters"])
        per_seed = " / ".join(f"{100 * a:.2f}" for a in s["accuracy"])
        scaling = "-" if s["scaling"] is None else f"{s['scaling']:g}"
        print(
            f"| {key} | {s['lr']:g} | {scaling} | {per_seed} | {100 * s['accuracy_mean']:.2f}{std} | {params} | "
            f"{s['s_per_step_median']:.3f} |"
        )


def stage_record(settings: dict) -> dict:
    from records import benchmark_provenance

    return {**benchmark_provenance(), "settings": settings}


# ---- the timing stage: measured afresh unless --reuse (benchmarks/timing.py) -------------------------


def timing_specs(round_index: int, size: int, data: dict, common: list[str]) -> dict[str, dict]:
    """Every arm's timing run of one round (-1: the warm-up round, never counted or stored)."""
    stage = "timing-warmup" if round_index < 0 else f"timing{round_index}"
    extra = [*TIMING_SCHEDULE, *common]
    # any rate of the grid: only the step time is read
    return {row: spec(stage, row, "sst2", 1, grid(row, size)[1], data, "validation", extra) for row in ROWS}


def stored_timing_rows(specs: list[dict], reuse: bool) -> list[dict] | None:
    """The stored rows to reuse instead of measuring, or None to measure afresh. Without --reuse a stored
    row is never read, so a rerun cannot print old figures as new; with it, every row must be stored with
    the same settings (a missing one means measuring them all, so the arms stay interleaved)."""
    if not reuse:
        return None
    stored = []
    for s in specs:
        out = Path(s["out"])
        if not out.is_file():
            print(f"--reuse: {out.name} is not stored; measuring every timing row afresh", flush=True)
            return None
        r = json.loads(out.read_text())
        if r.get("settings") != s["settings"]:
            sys.exit(f"bench.py: {out} was made with other settings; move it away or pass another --work")
        stored.append(r)
    return stored


def run_job(s: dict) -> dict:
    """One run in a fresh process; its result, or exit with one line naming its log."""
    out = Path(s["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        code = subprocess.run(
            [sys.executable, __file__, "--job", json.dumps(s)], stdout=f, stderr=subprocess.STDOUT
        ).returncode
    if code != 0 or not out.is_file():
        sys.exit(f"bench.py: timing run {s['id']} failed (exit {code}): see {log}")
    return json.loads(out.read_text())


def measure_timing(
    specs: dict[int, dict[str, dict]], rounds: int, max_load: float, load=timing.load_average
) -> list[dict]:
    """A warm-up round, then `rounds` interleaved rounds, each run to a scratch file; a row is stored in
    --work only when the 1-minute load stayed at or below `max_load`, else one line says it was refused."""
    results: dict[tuple[str, int], dict] = {}

    def arm(row: str):
        calls = iter(range(-1, rounds))  # time_rounds calls each arm once per round, the warm-up first

        def call() -> float:
            r = next(calls)
            s = {**specs[r][row], "out": str(RUNS / f"{specs[r][row]['id']}.json")}
            results[row, r] = run_job(s)
            print(f"{s['id']:<48} {results[row, r]['s_per_step'] * 1000:7.1f} ms/step", flush=True)
            return results[row, r]["s_per_step"]  # the job's own clock: leaves out process start-up

        return call

    measured = timing.time_rounds({row: arm(row) for row in ROWS}, rounds, load=load)
    print("timing order:", " ".join(measured.order()), flush=True)
    written = []
    for m in measured.rows:
        s = specs[m.round][m.arm]
        refusal = timing.load_refusal(s["id"], m.load_start, m.load_end, max_load)
        if refusal:
            print(refusal, flush=True)
            continue
        row = {**results[m.arm, m.round], "out": s["out"], "load_1min": {"start": m.load_start, "end": m.load_end}}
        Path(s["out"]).write_text(json.dumps(row, indent=1))
        written.append(row)
    for r in specs.values():  # the scratch results and logs, warm-up included
        for s in r.values():
            for suffix in (".json", ".log"):
                (RUNS / f"{s['id']}{suffix}").unlink(missing_ok=True)
    return written


def timing_summary(rows: list[dict]) -> dict:
    """Median and spread of seconds per step per arm, in ROWS order."""
    seconds = {row: [r["s_per_step"] for r in rows if r["row"] == row] for row in ROWS}
    for row, values in seconds.items():
        if 0 < len(values) < timing.MIN_ROUNDS:
            print(f"timing: {row} has {len(values)} row(s) after refusals, fewer than {timing.MIN_ROUNDS}", flush=True)
    return timing.summarize(seconds)


def budget_pairs() -> list[tuple[str, str]]:
    """lmforge AdaLoRA against LoRA and peft's AdaLoRA at the same budget."""
    return [(f"adalora_{b}", f"{other}_{b}") for b in ("r2", "r8") for other in ("lora", "peft_adalora")]


def run_profile(args) -> dict:
    profile = PROFILES[args.profile]
    model = args.model or profile.get("model")
    common = [*profile.get("set", []), *([f"model.name={model}"] if model else []), *args.set]
    datasets = args.datasets or profile["datasets"]
    seeds = args.seeds or profile.get("seeds", [2, 3, 4])
    size = profile["grid"]
    result: dict = {"profile": args.profile, "stages": {}}
    data = {}
    for d in datasets:
        data[d] = carve_validation(d, profile.get("validation_size", VALIDATION["size"][d]))
        print(f"{d}: fit {data[d]['fit']['rows']} rows, validation {data[d]['validation']['rows']} rows", flush=True)
    result["data"] = data
    result["reported_split"] = {d: f"{d}:dev (no test split is shipped for {d})" for d in datasets}

    if profile["timing"] and "timing" in args.stages:
        timing_data = data.get("sst2") or data[datasets[0]]
        specs = {r: timing_specs(r, size, timing_data, common) for r in range(-1, args.rounds)}  # -1: warm-up
        measured = [s for r in range(args.rounds) for s in specs[r].values()]
        rows = stored_timing_rows(measured, args.reuse)
        reused = [r["id"] for r in rows or []]
        if rows is not None:
            print(timing.reused_line(rows), flush=True)
        else:
            rows = measure_timing(specs, args.rounds, args.max_load)
        result["stages"]["timing"] = stage_record(
            {
                "schedule": TIMING_SCHEDULE,
                "common": common,
                "rounds": args.rounds,
                "warmup_rounds": 1,
                "max_load": args.max_load,
                "reused": reused,
            }
        )
        result["timing"] = timing_summary(rows)
        result["step_time_ratios"] = timing.median_ratios(result["timing"], budget_pairs())
        print("\ntiming: seconds per optimizer step (80 steps, one run at a time; median, spread)")
        print("\n".join(timing.format_summary(result["timing"], unit=1e-3, unit_name="ms/step")))
        for k, v in result["step_time_ratios"].items():
            print(f"step time {k}: {v:.3f}")

    sweep_extra = [*profile["sweep"], *common]
    specs = [
        spec("sweep", row, d, 1, lr, data[d], "validation", sweep_extra)
        for d in datasets
        for row in ROWS
        for lr in grid(row, size)
    ]
    sweep = launch(specs, args.workers)
    result["stages"]["sweep"] = stage_record(
        {
            "grids": {row: grid(row, size) for row in ROWS},
            "seed": 1,
            "overrides": sweep_extra,
            "scored_on": "validation",
        }
    )
    best = {}
    for d in datasets:
        for row in ROWS:
            tried = [r for r in sweep if r["dataset"] == d and r["row"] == row]
            if tried:  # ties go to the lower rate
                best[f"{d}/{row}"] = max(tried, key=lambda r: (r["accuracy"], -r["lr"]))["lr"]
    result["sweep"] = [{k: r[k] for k in ("dataset", "row", "lr", "accuracy")} for r in sweep]
    result["best_lr"] = best
    print("best learning rates (validation):", json.dumps(best), flush=True)
    if "quality" not in args.stages:
        return result

    quality_extra = [*profile["quality"], *common]
    specs = [
        spec("quality", row, d, seed, best[f"{d}/{row}"], data[d], "dev", quality_extra)
        for d in datasets
        for seed in seeds
        for row in ROWS
        if f"{d}/{row}" in best
    ]
    quality = summarize(launch(specs, args.workers))
    result["stages"]["quality"] = stage_record({"seeds": seeds, "overrides": quality_extra, "reported_on": "dev"})
    result["quality"] = quality
    result["accuracy_gaps"] = versus(quality, "accuracy_mean", lambda ours, theirs: ours - theirs)
    print_table(f"quality: seeds {seeds}, each arm at its validation-chosen rate, reported on dev", quality)
    for k, v in result["accuracy_gaps"].items():
        print(f"accuracy {k}: {100 * v:+.2f} points")
    return result


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="model name or folder (default: the recipes' minilm)")
    parser.add_argument("--workers", type=int, default=1, help="jobs run in parallel (sweep and quality only)")
    parser.add_argument("--datasets", nargs="+", choices=["trec6", "sst2"], help="default: the profile's")
    parser.add_argument("--seeds", nargs="+", type=int, help="quality seeds (default 2 3 4)")
    parser.add_argument("--rounds", type=int, default=timing.MIN_ROUNDS, help="measured timing rounds (at least 3)")
    parser.add_argument("--reuse", action="store_true", help="timing: reuse the stored rows instead of measuring")
    parser.add_argument(
        "--max-load",
        type=float,
        default=timing.default_max_load(),
        help="timing: refuse a row timed with the 1-minute load average above this (default: CPUs + 0.5)",
    )
    parser.add_argument(
        "--stages", nargs="+", choices=["timing", "sweep", "quality"], default=["timing", "sweep", "quality"]
    )
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--work", type=Path, default=WORK, help="folder for the carved data and each run's result")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run")
    args = parser.parse_args()
    if args.job:
        spec = json.loads(args.job)
        job(spec, ROWS[spec["row"]][0])
        return
    if args.rounds < timing.MIN_ROUNDS:
        parser.error(f"--rounds {args.rounds}: at least {timing.MIN_ROUNDS} measured rounds")
    WORK = args.work
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = run_profile(args)
    result["wall_minutes"] = round((time.time() - started) / 60, 1)
    from records import merge_benchmark_result

    merge_benchmark_result(args.results, f"equal_tuning_{args.profile}", result)


if __name__ == "__main__":
    main()
