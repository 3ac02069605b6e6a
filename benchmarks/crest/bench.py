"""Benchmark CReST and CReST+ (Wei et al., CVPR 2021) on long-tailed text classification with MiniLM.

For each dataset (TREC-6, AG News) and imbalance ratio gamma (10, 100), over --seeds, four arms on the
same long-tailed labeled set L and unlabeled set U (drawn from the training split by `crest.long_tail`,
seeded by the run's seed; 30% of each class's examples labeled, the paper's beta = 30% setting):

  supervised  FixMatch's loop with lambda_u = 0: L only
  fixmatch    FixMatch (one generation, no alignment): generation 1 of the crest run, which is the same
              training run (same L, U, seed and steps)
  crest       CReST: `generations` generations, class-rebalanced pseudo-labels (alpha = 1/3)
  crest+      CReST+: the same with progressive distribution alignment (t from 1 to 0.5)

Every arm trains each generation for the same steps. The reported split is the dataset's own dev split
(trec6:dev, agnews:dev); the learning rate is chosen on a balanced validation split carved from the
training data (--part tune: supervised and FixMatch at each rate of the profile's grid, at gamma 100, seed
1; CReST and CReST+ take FixMatch's rate, since each of their generations is a FixMatch run). The metric is
the paper's: balanced accuracy (mean per-class recall); beside it the minority recall (the rarer half of the
classes by labeled count) and the rarest class's recall.

Each run is `lmforge run crest/minilm_trec6 ...` in its own process, in work/<profile>/runs/NAME; a
finished run is reused only when its config.yaml equals the one these settings make (else the benchmark
stops and names the differing keys); an interrupted one is resumed.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/crest/bench.py --part tune
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/crest/bench.py --part quality
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/crest/bench.py --part speed
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/crest/bench.py --smoke     # the machinery on tiny-bert, minutes

The paper-scale settings are the `gpu` profile (full_on_gpu.sh). Results: results.json (keys tune/<profile>,
quality/<profile>, speed/<profile>), the charts generations-<dataset>-g<gamma>.svg, RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
ROOT = HERE.parents[1]
RESULTS = HERE / "results.json"
RECIPE = "crest/minilm_trec6"
DATASETS = {"trec6": ("trec6:train", "trec6:dev"), "agnews": ("agnews:train", "agnews:dev")}
VALIDATION_PER_CLASS = 20  # the balanced validation split carved from each training split
CARVE_SEED = 2024

PROFILES = {
    # about 2 hours on 2 CPU cores: 3 generations of 150 steps, batch 16, mu 2, short inputs
    "cpu": {
        "steps": 150,
        "generations": 3,
        "sets": ["train.batch_size=16", "crest.unlabeled_ratio=2", "train.save_every=50", "train.eval_every=150"],
        "max_length": {"trec6": 32, "agnews": 64},
        "lr_grid": [5e-5, 1e-4],
    },
    # the paper's shape (6 generations, mu 7, batch 32 x 7 unlabeled) at a text model's step count
    "gpu": {
        "steps": 2000,
        "generations": 6,
        "sets": [
            "train.batch_size=32",
            "crest.unlabeled_ratio=7",
            "train.save_every=500",
            "train.eval_every=500",
            "train.mixed_precision=bf16",
        ],
        "max_length": {"trec6": 64, "agnews": 128},
        "lr_grid": [2e-5, 5e-5, 1e-4],
    },
}
ARMS = {
    "supervised": ["crest.generations=1", "crest.unlabeled_weight=0", "crest.alignment=false"],
    "crest": ["crest.alignment=false"],
    "crest+": ["crest.alignment=true"],
}
SMOKE = ["model.name=tiny-bert", "data.max_eval_examples=64", "train.eval_every=4", "train.save_every=4"]


def carve(dataset: str, work: Path) -> tuple[Path, Path]:
    """pool.jsonl (the training split less the validation examples) and validation.jsonl (VALIDATION_PER_CLASS
    of each class, seeded), written once per dataset; the long tail is drawn from the pool."""
    from lmforge.data.files import load_examples

    folder = work / "data" / dataset
    pool, validation = folder / "pool.jsonl", folder / "validation.jsonl"
    if pool.is_file() and validation.is_file():
        return pool, validation
    examples = load_examples(DATASETS[dataset][0])
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(CARVE_SEED)
    held = set()
    for label in sorted(by_class):
        held.update(rng.sample(by_class[label], VALIDATION_PER_CLASS))
    folder.mkdir(parents=True, exist_ok=True)
    for path, keep in ((pool, lambda i: i not in held), (validation, lambda i: i in held)):
        rows = [{"text": t, "label": y} for i, (t, y) in enumerate(zip(examples.texts, examples.labels)) if keep(i)]
        path.with_suffix(".tmp").write_text("".join(json.dumps(r) + "\n" for r in rows))
        path.with_suffix(".tmp").rename(path)
    return pool, validation


def overrides(profile: dict, dataset: str, gamma: float, seed: int, lr: float, pool: Path, eval_spec: str) -> list[str]:
    return [
        f"data.train={pool}",
        f"data.eval={eval_spec}",
        f"model.max_length={profile['max_length'][dataset]}",
        f"train.max_steps={profile['steps']}",
        f"train.lr={lr}",
        f"train.seed={seed}",
        f"crest.generations={profile['generations']}",
        f"crest.long_tail.gamma={gamma}",
        "crest.long_tail.labeled_fraction=0.3",
        f"crest.long_tail.seed={seed}",
        *profile["sets"],
    ]


def lmforge_run(run_dir: Path, sets: list[str]) -> dict:
    """`lmforge run crest/minilm_trec6 SETS --run-dir run_dir`: reused when finished with these settings,
    resumed when interrupted; a folder made with other settings stops the benchmark."""
    from records import changed_settings, run_once

    from lmforge.cli.recipes import find_recipe
    from lmforge.registry import load_run_config

    wanted = load_run_config(find_recipe(RECIPE), sets)
    wanted.recipe = RECIPE
    saved = run_dir / "config.yaml"
    if saved.is_file() and (changed := changed_settings(saved.read_text(), wanted.to_yaml())):
        sys.exit(f"{run_dir}: made with other settings ({', '.join(changed)}); move it away to run it with these")
    resuming = saved.is_file() and not (run_dir / "final.json").is_file()
    command = [sys.executable, "-m", "lmforge", "run", RECIPE, *(["--resume"] if resuming else sets)]
    run_once([*command, "--run-dir", str(run_dir)], run_dir / "final.json", run_dir.with_suffix(".log"), ROOT)
    return json.loads((run_dir / "final.json").read_text())


def arm_rows(final: dict, arm: str) -> dict[str, dict]:
    """The arm's metrics; the crest run also yields the fixmatch row (its generation 1)."""
    keys = ("balanced_accuracy", "minority_recall", "tail_recall", "accuracy", "macro_f1")
    pick = lambda m: {k: m[k] for k in keys if m.get(k) is not None}  # noqa: E731
    rows = {arm: pick(final["generations"][-1]["metrics"])}
    rows[arm]["by_generation"] = [pick(g["metrics"]) for g in final["generations"]]
    if arm == "crest":
        rows["fixmatch"] = pick(final["generations"][0]["metrics"])
    return rows


def mean_spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def tune(profile_name: str, datasets: list[str], smoke: bool) -> dict:
    """The learning rate of supervised and of FixMatch per dataset, by validation balanced accuracy at
    gamma 100, seed 1 (the same grid for both)."""
    profile, work = PROFILES[profile_name], HERE / "work" / ("smoke" if smoke else profile_name)
    chosen = {}
    for dataset in datasets:
        pool, validation = carve(dataset, work)
        scores = {"supervised": {}, "fixmatch": {}}
        for lr in profile["lr_grid"]:
            fixmatch = ["crest.generations=1", "crest.alignment=false"]
            for arm, extra in (("supervised", ARMS["supervised"]), ("fixmatch", fixmatch)):
                sets = [*overrides(profile, dataset, 100, 1, lr, pool, str(validation)), *extra, *(SMOKE * smoke)]
                final = lmforge_run(work / "tune" / f"{dataset}-{arm}-lr{lr:g}", sets)
                scores[arm][f"{lr:g}"] = final["metrics"]["balanced_accuracy"]
        chosen[dataset] = {arm: max(s, key=s.get) for arm, s in scores.items()} | {"validation": scores}
        print(f"{dataset}: validation balanced accuracy {scores}; chosen {chosen[dataset]}")
    return chosen


def quality(profile_name: str, datasets: list[str], gammas: list[float], seeds: list[int], smoke: bool) -> dict:
    from records import benchmark_provenance

    profile, work = PROFILES[profile_name], HERE / "work" / ("smoke" if smoke else profile_name)
    tuned = json.loads(RESULTS.read_text())[f"tune/{profile_name}"] if not smoke else None
    out = {"provenance": benchmark_provenance(), "profile": profile, "tables": {}}
    for dataset in datasets:
        pool, _ = carve(dataset, work)
        speeds = []  # pseudo-labeling U: batched inference, unlabeled examples per second
        for gamma in gammas:
            runs: dict[str, list[dict]] = {}
            for seed in seeds:
                for arm, extra in ARMS.items():
                    lr = float(tuned[dataset]["supervised" if arm == "supervised" else "fixmatch"]) if tuned else 5e-5
                    sets = [*overrides(profile, dataset, gamma, seed, lr, pool, DATASETS[dataset][1]), *extra,
                            *(SMOKE * smoke)]  # fmt: skip
                    final = lmforge_run(work / "runs" / f"{dataset}-g{gamma:g}-{arm}-s{seed}", sets)
                    for name, row in arm_rows(final, arm).items():
                        runs.setdefault(name, []).append(row)
                    speeds += [g["pseudo_labels"]["examples_per_second"] for g in final["generations"]
                               if "pseudo_labels" in g]  # fmt: skip
            table = {}
            for arm in ("supervised", "fixmatch", "crest", "crest+"):
                rows = runs[arm]
                table[arm] = {k: mean_spread([r[k] for r in rows]) for k in rows[0] if k != "by_generation"}
                if "by_generation" in rows[0]:
                    table[arm]["by_generation"] = generation_means([r["by_generation"] for r in rows])
            out["tables"][f"{dataset}/g{gamma:g}"] = table
            print_table(dataset, gamma, table)
        out.setdefault("pseudo_label_examples_per_second", {})[dataset] = mean_spread(speeds)
        print(f"{dataset}: pseudo-labeling U at {statistics.median(speeds):,.0f} examples/s (median of {len(speeds)})")
    return out


def generation_means(runs: list[list[dict]]) -> list[dict]:
    """Each generation's metrics, averaged over the runs (seeds)."""
    return [{k: statistics.fmean(run[g][k] for run in runs) for k in runs[0][g]} for g in range(len(runs[0]))]


def print_table(dataset: str, gamma: float, table: dict) -> None:
    def cell(stat: dict) -> str:
        std = f" ± {100 * stat['std']:.1f}" if stat["std"] is not None else ""
        return f"{100 * stat['mean']:.1f}{std}"

    print(f"\n{dataset}, gamma {gamma:g} (dev; mean ± std over seeds)")
    print("| arm | balanced accuracy | minority recall | rarest-class recall | accuracy |")
    print("|---|---|---|---|---|")
    for arm, row in table.items():
        cells = [cell(row[k]) if k in row else "" for k in ("balanced_accuracy", "minority_recall", "tail_recall",
                                                            "accuracy")]  # fmt: skip
        print(f"| {arm} | {' | '.join(cells)} |")


def write_charts(quality_result: dict) -> list[Path]:
    """Per-generation balanced accuracy and minority recall of CReST and CReST+ (mean over seeds), FixMatch
    and supervised as flat references: generations-<dataset>-g<gamma>.svg."""
    from lmforge.core.report import html_page, line_chart_svg

    written = []
    for key, table in quality_result["tables"].items():
        dataset, gamma = key.split("/")
        series = {}
        for arm in ("crest", "crest+"):
            for metric, label in (("balanced_accuracy", "balanced accuracy"), ("minority_recall", "minority recall")):
                series[f"{arm} {label}"] = [(g + 1, row[metric]) for g, row in enumerate(table[arm]["by_generation"])]
        n = len(table["crest"]["by_generation"])
        for arm in ("fixmatch", "supervised"):
            series[f"{arm} balanced accuracy"] = [(1, table[arm]["balanced_accuracy"]["mean"]),
                                                  (n, table[arm]["balanced_accuracy"]["mean"])]  # fmt: skip
        svg = line_chart_svg(series, f"{dataset}, gamma {gamma[1:]}: dev metrics by generation (mean over seeds)",
                             "generation", "share", y_from_zero=True)  # fmt: skip
        path = HERE / f"generations-{dataset}-{gamma}.svg"
        path.write_text(svg)
        (HERE / "work").mkdir(exist_ok=True)
        (HERE / "work" / f"{path.stem}.html").write_text(html_page(path.stem, svg))  # for a look in a browser
        written.append(path)
    return written


def speed(profile_name: str, rounds: int, steps: int, max_load: float | None) -> dict:
    """s/step of a FixMatch run against a CReST+ generation (alignment on) of the same steps, by the timing
    rules (warm-up apart, interleaved rounds, medians), each run's own train_seconds / steps."""
    import tempfile

    import timing

    from lmforge.cli.recipes import find_recipe  # noqa: F401  (fail early when lmforge is missing)

    profile, work = PROFILES[profile_name], HERE / "work" / profile_name
    pool, validation = carve("trec6", work)
    base = [*overrides(profile, "trec6", 10, 1, 5e-5, pool, str(validation)), f"train.max_steps={steps}",
            "crest.generations=1", f"train.eval_every={steps}", f"train.save_every={steps}",
            *(SMOKE if profile_name == "smoke" else [])]  # fmt: skip
    arm_sets = {"fixmatch": ["crest.alignment=false"], "crest+ generation": ["crest.alignment=true"]}

    def arm(name: str):
        def call() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                final = lmforge_run(Path(tmp) / "run", [*base, *arm_sets[name]])
            return final["train_seconds"] / final["steps"]

        return call

    result = timing.time_rounds({name: arm(name) for name in arm_sets}, rounds=rounds)
    limit = max_load if max_load is not None else timing.default_max_load()
    summary = timing.summarize(result.seconds(limit))
    ratio = timing.median_ratios(summary, [("crest+ generation", "fixmatch")])
    print("\n".join(timing.format_summary(summary)), f"\nratio {ratio}")
    return {"summary": summary, "ratio": ratio, "order": result.order(), "steps": steps, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["tune", "quality", "speed"], default="quality")
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--gammas", nargs="+", type=float, default=[10, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=3, help="speed: measured rounds (at least 3)")
    parser.add_argument("--speed-steps", type=int, default=30, help="speed: steps per timed run")
    parser.add_argument("--max-load", type=float, default=None, help="speed: refuse rows above this load")
    parser.add_argument("--smoke", action="store_true", help="tiny-bert, a few steps: checks the machinery")
    args = parser.parse_args()
    from records import benchmark_provenance, merge_benchmark_result

    if args.smoke:
        PROFILES["smoke"] = {**PROFILES["cpu"], "steps": 4, "generations": 2, "lr_grid": [5e-5]}
        args.profile, results = "smoke", HERE / "work" / "smoke" / "results.json"
    else:
        results = RESULTS
    if args.part == "tune":
        chosen = tune(args.profile, args.datasets, args.smoke)
        merge_benchmark_result(results, f"tune/{args.profile}", {**chosen, "provenance": benchmark_provenance()})
    elif args.part == "quality":
        result = quality(args.profile, args.datasets, args.gammas, args.seeds, args.smoke)
        merge_benchmark_result(results, f"quality/{args.profile}", result)
        if not args.smoke:
            print("charts:", *write_charts(result))
    else:
        result = speed(args.profile, args.rounds, args.speed_steps, args.max_load)
        merge_benchmark_result(results, f"speed/{args.profile}", {**result, "provenance": benchmark_provenance()})


if __name__ == "__main__":
    main()
