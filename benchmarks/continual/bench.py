"""Benchmark continual learning (Wu, Luu, Pan, Wang, Phung, Haffari 2024, "Continual Learning for Large
Language Models: A Survey") with MiniLM on a 4-task stream and Gemma 3 270M on a 2-domain causal-LM stream.

  tune     every strategy's main knob at two values, one stream each (the given order, seed 1), chosen by
           the stream's average accuracy on VALIDATION data carved from the training splits: per dataset
           work/<profile>/data/pool/<name>.jsonl (the training split less the carve) and validation/<name>.jsonl
           (VALIDATION_PER_CLASS of each class, written class by class in turn, so a capped head stays
           balanced); the recipe names a file task by its stem, hence one folder per kind. The same budget
           for every strategy (KNOBS): sequential, joint and adapters choose train.lr; replay, ewc and lwf
           take sequential's chosen rate and choose their own knob; olora takes adapters' rate (a LoRA trains
           at a LoRA's rate) and chooses lambda_1. replay_size 1000 is at least every earlier example in
           the CPU profile (3 x 256): "replay everything" against a 200-example buffer.
  quality  the 4-task stream (sst2, trec6, agnews, obqa: builtin names, trained on their train splits and
           reported on their dev splits), task-incremental, in the given and the reversed order, --seeds,
           every strategy at its tuned setting: average accuracy, BWT, FWT, forgetting (final.json
           "stream"), trainable parameters (the child runs'), replay buffer size, training seconds; mean
           and std over seeds and orders. joint trains every task at once, so it runs once per seed (no
           order). Plus a class-incremental stream: AG News's classes two at a time (World+Sports, then
           Business+Sci/Tech; files written from agnews:train / agnews:dev), sequential, replay, lwf, ewc
           and joint at the settings tuned on the 4-task stream (no tuning budget of its own), --seeds.
  lm       continual_lm/gemma_gsm8k_mbpp, sequential and replay, --lm-seeds: GSM8K's held-out loss before,
           after GSM8K and after MBPP (the rise), and MBPP's after MBPP.
  speed    EWC's and LwF's s/step against sequential fine-tuning's, as ratios of medians, by the timing
           rules (benchmarks/timing.py: a warm-up round apart, >= 3 interleaved rounds, load refusal): each
           arm a 2-task stream (sst2, then agnews) in a fresh folder, timed by its second task's
           train_seconds / steps (the penalty and the teacher act from task 2 on).
  estimate the CPU profile's time per part, from sizing.py's cost model (nothing is run).

Every run is `lmforge run RECIPE ...` in its own process, in work/<profile>/<part>/NAME; a finished run is
reused only when its config.yaml equals the one these settings make (else the benchmark stops and names
the differing keys); an interrupted one is resumed. A finished stream's child checkpoints, child models
and EWC anchors are deleted (0.35 GB a MiniLM task, 4 GB a Gemma task; the tables need their final.json).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/continual/bench.py --part tune      # then quality, lm, speed
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/continual/bench.py --part tune --smoke   # tiny-bert, minutes

CPU profile (2 cores): 256 training examples (8 steps of 32) and 100 held-out examples per task, 1 epoch,
max_length 64, EWC's Fisher on 64 examples; Gemma 40 steps of 4 pairs per task (the recipe's), seed 1;
speed arms of 15 steps a task. Estimated by `--part estimate` (sizing.py) at 0.85 s a MiniLM step
(benchmarks/finetune/RESULTS.md: full fine-tuning, idle machine) and about 7 / 10 s a Gemma step on GSM8K /
MBPP (from benchmarks/vstar/RESULTS.md's SFT steps of 8 pairs): tune 21 min, quality 72 (4-task 60,
class-incremental 12), lm 34, speed 12: 139 minutes, about 2.3 hours (2.0 at 0.6 s a MiniLM step); most of
a stream's time is start-up, model saves and the scores after each task, not its 8 steps a task. Longer
when the machine is shared. The `gpu` profile (full_on_gpu.sh) uses the full splits, 3 epochs, max_length 128.
Results: results.json (tune/<profile>, quality/<profile>, lm/<profile>, speed/<profile>), the charts
quality-*-<profile>.svg and lm-<profile>.svg, RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
sys.path.insert(0, str(HERE))
import continual_tables as tables  # noqa: E402

ROOT = HERE.parents[1]
RESULTS = HERE / "results.json"
STREAM_RECIPE, LM_RECIPE = "continual/minilm_stream", "continual_lm/gemma_gsm8k_mbpp"
STREAM = ["sst2", "trec6", "agnews", "obqa"]  # obqa's held-out split is "dev" (data/builtin.py)
ORDERS = {"given": STREAM, "reversed": STREAM[::-1]}
STRATEGIES = ["sequential", "replay", "ewc", "lwf", "adapters", "olora", "joint"]
CLASS_STRATEGIES = ["sequential", "replay", "lwf", "ewc", "joint"]
CLASS_TASKS = {"world_sports": ["World", "Sports"], "business_scitech": ["Business", "Sci/Tech"]}
# each strategy's main knob and its two values; base: whose chosen train.lr it trains at (None: its own)
KNOBS = {
    "sequential": ("train.lr", [5e-5, 1e-4], None),
    "joint": ("train.lr", [5e-5, 1e-4], None),
    "adapters": ("train.lr", [5e-4, 1e-3], None),
    "replay": ("continual.replay_size", [200, 1000], "sequential"),
    "ewc": ("continual.ewc_lambda", [100, 10000], "sequential"),
    "lwf": ("continual.lwf_weight", [0.5, 2], "sequential"),
    "olora": ("continual.olora_lambda1", [0.1, 0.5], "adapters"),
}
VALIDATION_PER_CLASS = 40
CARVE_SEED = 2024

PROFILES = {
    "cpu": {
        "train_examples": 256, "eval_examples": 100, "fisher_examples": 64,
        "sets": ["model.max_length=64", "train.epochs=1", "train.batch_size=32", "train.save_every=0"],
        "lm_sets": ["train.max_steps=40", "train.save_every=40", "train.eval_every=40"],
        "speed_steps": 15,
    },
    "gpu": {
        "train_examples": 0, "eval_examples": 0, "fisher_examples": 500,
        "sets": ["model.max_length=128", "train.epochs=3", "train.batch_size=32", "train.save_every=0",
                 "train.mixed_precision=bf16"],
        "lm_sets": ["train.max_steps=500", "train.batch_size=8", "train.save_every=250", "train.eval_every=500",
                    "continual_lm.held_out=100", "continual_lm.replay_size=1000", "train.mixed_precision=bf16"],
        "speed_steps": 200,
    },
}  # fmt: skip
SMOKE = {
    "train_examples": 32, "eval_examples": 16, "fisher_examples": 16,
    "sets": ["model.name=tiny-bert", "model.max_length=32", "train.epochs=1", "train.batch_size=16"],
    "lm_sets": ["model.name=tiny-gpt2", "model.max_length=512", "train.max_steps=3", "train.eval_every=3",
                "train.save_every=3", "data.max_train_examples=24", "continual_lm.held_out=8",
                "continual_lm.replay_size=8"],
    "speed_steps": 4,
}  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path.with_suffix(".tmp").rename(path)


def carve(dataset: str, work: Path) -> tuple[Path, Path]:
    """pool/<dataset>.jsonl (the training split less the validation examples, in its own order) and
    validation/<dataset>.jsonl (VALIDATION_PER_CLASS of each class, seeded, one class after another in
    turn), written once."""
    from lmforge.data.files import load_examples

    pool, validation = work / "data" / "pool" / f"{dataset}.jsonl", work / "data" / "validation" / f"{dataset}.jsonl"
    if pool.is_file() and validation.is_file():
        return pool, validation
    examples = load_examples(f"{dataset}:train")
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(CARVE_SEED)
    picked = {label: rng.sample(by_class[label], VALIDATION_PER_CLASS) for label in sorted(by_class)}
    held = {i for ids in picked.values() for i in ids}
    interleaved = [ids[k] for k in range(VALIDATION_PER_CLASS) for ids in picked.values()]
    row = lambda i: {"text": examples.texts[i], "label": examples.labels[i]}  # noqa: E731
    write_jsonl(pool, [row(i) for i in range(len(examples)) if i not in held])
    write_jsonl(validation, [row(i) for i in interleaved])
    return pool, validation


def class_tasks(work: Path) -> list[str]:
    """The class-incremental stream's TRAIN|EVAL pairs: agnews's train and dev rows of each pair of classes."""
    from lmforge.data.files import load_examples

    specs = []
    for name, labels in CLASS_TASKS.items():
        files = []
        for split in ("train", "dev"):
            path = work / "data" / f"agnews-classes-{split}" / f"{name}.jsonl"
            if not path.is_file():
                examples = load_examples(f"agnews:{split}")
                write_jsonl(path, [{"text": t, "label": y} for t, y in zip(examples.texts, examples.labels)
                                   if y in labels])  # fmt: skip
            files.append(str(path))
        specs.append("|".join(files))
    return specs


def lmforge_run(recipe: str, run_dir: Path, sets: list[str]) -> dict:
    """`lmforge run RECIPE SETS --run-dir run_dir`: reused when finished with these settings, resumed when
    interrupted; a folder made with other settings stops the benchmark. Returns its final.json."""
    from records import changed_settings, run_once

    from lmforge.cli.recipes import find_recipe
    from lmforge.registry import load_run_config

    wanted = load_run_config(find_recipe(recipe), sets)
    saved = run_dir / "config.yaml"
    if saved.is_file() and (changed := changed_settings(saved.read_text(), wanted.to_yaml())):
        sys.exit(f"{run_dir}: made with other settings ({', '.join(changed)}); move it away to run it with these")
    resuming = saved.is_file() and not (run_dir / "final.json").is_file()
    command = [sys.executable, "-m", "lmforge", "run", recipe, *(["--resume"] if resuming else sets)]
    log = run_dir.parent / f"{run_dir.name}.log"  # not with_suffix: "lwf-0.5" would log to "lwf-0.log"
    run_once([*command, "--run-dir", str(run_dir)], run_dir / "final.json", log, ROOT)
    prune(run_dir)
    return json.loads((run_dir / "final.json").read_text())


def prune(run_dir: Path) -> None:
    """A finished stream's child checkpoints and models and its EWC anchors: only resuming needed them."""
    stages = run_dir / "stages"
    for child in stages.glob("*/"):
        for folder in ("checkpoints", "final"):
            shutil.rmtree(child / folder, ignore_errors=True)
    for anchor in stages.glob("fisher-*.safetensors"):
        anchor.unlink()


def stream_sets(profile: dict, tasks: list[str], seed: int, setting: str = "task") -> list[str]:
    return [
        f"continual.tasks={','.join(tasks)}",
        f"continual.setting={setting}",
        f"data.max_train_examples={profile['train_examples']}",
        f"data.max_eval_examples={profile['eval_examples']}",
        f"continual.fisher_examples={profile['fisher_examples']}",
        f"train.seed={seed}",
        *profile["sets"],
    ]


def tuned_sets(strategy: str, value: float, chosen: dict) -> list[str]:
    """The strategy, its knob at `value`, and its base strategy's chosen rate when it has one."""
    key, _, base = KNOBS[strategy]
    base_rate = [f"train.lr={chosen[base]['value']:g}"] if base else []  # the base's knob is train.lr
    return [f"continual.strategy={strategy}", f"{key}={value:g}", *base_rate]


def tune(profile: dict, work: Path) -> dict:
    """Each strategy's knob by validation average accuracy (the given order, seed 1)."""
    tasks = ["|".join(str(p) for p in carve(name, work)) for name in STREAM]
    chosen, validation = {}, {}
    for strategy in KNOBS:  # bases (sequential, adapters) come before the strategies that take their rate
        key, values, _ = KNOBS[strategy]
        scores = {}
        for value in values:
            sets = [*stream_sets(profile, tasks, 1), *tuned_sets(strategy, value, chosen)]
            final = lmforge_run(STREAM_RECIPE, work / "tune" / f"{strategy}-{value:g}", sets)
            scores[f"{value:g}"] = final["stream"]["average_accuracy"]
        best = max(values, key=lambda v: scores[f"{v:g}"])
        chosen[strategy] = {"key": key, "value": best, "sets": tuned_sets(strategy, best, chosen)}
        validation[strategy] = scores
        print(f"{strategy}: validation average accuracy by {key} {scores}; chosen {best:g}", flush=True)
    print("\nvalidation average accuracy (points) at each value of the knob; ties go to the first value")
    print("| strategy | knob | first value | second value | chosen |")
    print("|---|---|---|---|---|")
    for s, c in chosen.items():
        cells = " | ".join(f"{v}: {100 * a:.1f}" for v, a in validation[s].items())
        print(f"| {s} | {c['key']} | {cells} | {c['value']:g} |")
    return {"chosen": chosen, "validation": validation, "profile": profile}


def quality(profile: dict, work: Path, chosen: dict, seeds: list[int]) -> dict:
    """The 4-task stream (task-incremental, both orders) and the class-incremental AG News stream."""
    out = {"profile": profile, "seeds": seeds, "tuned": {s: c["sets"] for s, c in chosen.items()}}
    described = {s: f"{c['key'].split('.')[-1]} {c['value']:g}" for s, c in chosen.items()}
    streams = {"task_incremental": (STRATEGIES, ORDERS, "task"),
               "class_incremental": (CLASS_STRATEGIES, {"given": class_tasks(work)}, "class")}  # fmt: skip
    for kind, (strategies, orders, setting) in streams.items():
        runs = {}
        for strategy in strategies:
            for order, tasks in orders.items():
                if strategy == "joint" and order != "given":
                    continue  # one run over every task at once: the order does not enter
                for seed in seeds:
                    sets = [*stream_sets(profile, tasks, seed, setting), *chosen[strategy]["sets"]]
                    run_dir = work / kind / f"{strategy}-{order}-s{seed}"
                    final = lmforge_run(STREAM_RECIPE, run_dir, sets)
                    record = tables.stream_record(final, run_dir) | {"order": order, "seed": seed}
                    runs.setdefault(strategy, []).append(record)
        summary = {s: tables.summarize(r) for s, r in runs.items()}
        out[kind] = {"runs": runs, "summary": summary}
        print(tables.stream_table(kind.replace("_", "-"), summary, described), flush=True)
    return out


def lm(profile: dict, work: Path, seeds: list[int]) -> dict:
    """GSM8K then MBPP, sequential and replay: GSM8K's held-out loss through the stream."""
    out = {"profile": profile, "seeds": seeds, "strategies": {}}
    for strategy in ("sequential", "replay"):
        runs = []
        for seed in seeds:
            sets = [f"continual_lm.strategy={strategy}", f"train.seed={seed}", *profile["lm_sets"]]
            final = lmforge_run(LM_RECIPE, work / "lm" / f"{strategy}-s{seed}", sets)
            g, m = final["tasks"].index("gsm8k"), final["tasks"].index("mbpp")
            L = final["loss_matrix"]
            runs.append({
                "seed": seed, "gsm8k_before": final["before"][g], "gsm8k_after_gsm8k": L[g][g],
                "gsm8k_after_mbpp": L[m][g], "gsm8k_rise": L[m][g] - L[g][g], "mbpp_before": final["before"][m],
                "mbpp_after_gsm8k": L[g][m], "mbpp_after_mbpp": L[m][m], "replayed": final["replayed"],
                "train_seconds": final["train_seconds"],
            })  # fmt: skip
        out["strategies"][strategy] = {"runs": runs, **{k: tables.mean_spread([r[k] for r in runs])
                                                        for k in runs[0] if k != "seed"}}  # fmt: skip
    print("\nGSM8K then MBPP (held-out loss, nats per completion token; mean ± std over seeds)")
    print("| strategy | GSM8K before | GSM8K after GSM8K | GSM8K after MBPP | rise | MBPP after MBPP | replayed "
          "| train s |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for strategy, row in out["strategies"].items():
        keys = ("gsm8k_before", "gsm8k_after_gsm8k", "gsm8k_after_mbpp", "gsm8k_rise", "mbpp_after_mbpp")
        cells = [tables.plain(row[k], 3) for k in keys] + [tables.plain(row["replayed"]),
                                                            tables.plain(row["train_seconds"])]  # fmt: skip
        print(f"| {strategy} | {' | '.join(cells)} |")
    return out


def speed(profile: dict, rounds: int, max_load: float | None) -> dict:
    """s/step of task 2 (agnews, after sst2) under ewc and lwf against sequential, by the timing rules."""
    import tempfile

    import timing

    steps = profile["speed_steps"]
    base = [*stream_sets({**profile, "train_examples": 32 * steps, "eval_examples": 64, "fisher_examples": 64},
                         ["sst2", "agnews"], 1), f"train.max_steps={steps}", "continual.ewc_lambda=1000"]  # fmt: skip
    arms = {name: [f"continual.strategy={name}"] for name in ("sequential", "ewc", "lwf")}

    def arm(name: str):
        def call() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                lmforge_run(STREAM_RECIPE, Path(tmp) / "run", [*base, *arms[name]])
                task2 = json.loads(next((Path(tmp) / "run" / "stages").glob("task-2-*/final.json")).read_text())
            return task2["train_seconds"] / task2["steps"]

        return call

    result = timing.time_rounds({name: arm(name) for name in arms}, rounds=rounds)
    limit = max_load if max_load is not None else timing.default_max_load()
    for row in result.rows:
        if refusal := timing.load_refusal(f"{row.arm} round {row.round}", row.load_start, row.load_end, limit):
            print(refusal)
    summary = timing.summarize(result.seconds(limit))
    ratios = timing.median_ratios(summary, [("ewc", "sequential"), ("lwf", "sequential")])
    if summary:
        print_speed_table(summary, ratios)
    return {"summary": summary, "ratios": ratios, "order": result.order(), "steps": steps, "rounds": rounds,
            "load_limit": limit, "rows": [vars(r) for r in result.rows]}  # fmt: skip


def print_speed_table(summary: dict, ratios: dict) -> None:
    print("\ntask 2's s/step (median over rounds; the ratio is to sequential's median)")
    print("| arm | median s/step | min-max | IQR | rounds | ratio |\n|---|---|---|---|---|---|")
    for name, s in summary.items():
        ratio = ratios.get(f"{name} / sequential", 1.0 if name == "sequential" else None)
        shown = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"| {name} | {s['median']:.3f} | {s['min']:.3f}-{s['max']:.3f} | {s['iqr']:.3f} | {s['rounds']} "
              f"| {shown} |")  # fmt: skip


def main() -> None:
    from sizing import print_estimate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["tune", "quality", "lm", "speed", "estimate"], default="quality")
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--lm-seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=3, help="speed: measured rounds (at least 3)")
    parser.add_argument("--max-load", type=float, default=None, help="speed: refuse rows above this load")
    parser.add_argument("--smoke", action="store_true", help="tiny-bert and tiny-gpt2, a few steps: the machinery")
    args = parser.parse_args()
    if args.part == "estimate":
        return print_estimate(PROFILES["cpu"], args.seeds, args.lm_seeds, args.rounds)
    from records import benchmark_provenance, merge_benchmark_result

    if args.smoke:
        PROFILES["smoke"] = SMOKE
        args.profile, results = "smoke", HERE / "work" / "smoke" / "results.json"
    else:
        results = RESULTS
    profile, work = PROFILES[args.profile], HERE / "work" / args.profile
    key = f"{args.part}/{args.profile}"
    if args.part == "tune":
        result = tune(profile, work)
    elif args.part == "quality":
        stored = json.loads(results.read_text()) if results.is_file() else {}
        if f"tune/{args.profile}" not in stored:
            sys.exit(f"no tune/{args.profile} in {results}: run --part tune first (same --profile)")
        result = quality(profile, work, stored[f"tune/{args.profile}"]["chosen"], args.seeds)
        print("charts:", *tables.quality_charts(results.parent, result, args.profile))
    elif args.part == "lm":
        result = lm(profile, work, args.lm_seeds)
        print("chart:", tables.lm_chart(results.parent, result, args.profile))
    else:
        result = speed(profile, args.rounds, args.max_load)
        if not result["summary"]:
            sys.exit("speed: every row was above the load limit; nothing written to results.json")
    merge_benchmark_result(results, key, {**result, "provenance": benchmark_provenance()})


if __name__ == "__main__":
    main()
