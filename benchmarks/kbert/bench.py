"""Benchmark K-BERT (Liu et al., AAAI 2020, "K-BERT: Enabling Language Representation with Knowledge Graph").

Each run is a real `lmforge run` in its own process, reused when its final.json exists (an interrupted
run is resumed), so an interrupted benchmark picks up where it stopped; each finished run's numbers
are also kept in benchmarks/kbert/runs/NAME.json (committed), and a run with a record is not run
again (delete the record and work/NAME to rerun it, e.g. with other --set values). MiniLM over --seeds:

TREC-50 (fine-grained question classification, trec50:dev), for each graph (wordnet, conceptnet):
  no_graph        plain full fine-tuning (finetune/minilm_trec6 on trec50, max_length 128): the baseline
  kbert           kbert/minilm_trec50: the paper's model
  no_visible      the same without the visible matrix (the paper's "knowledge noise" ablation)
  hard_positions  the same with hard positions 0..L-1 instead of soft positions
OpenBookQA (obqa:dev, a knowledge-dependent task), multiple choice (kbert/minilm_obqa, kbert.choices:
  each question + choice is a tree with one score, the four scores compete); no_graph is the same
  recipe with kbert.max_entities=0 (no branches: plain multiple-choice fine-tuning); the same four
  rows for each graph.
SST-2 (sst2:dev): no_graph vs kbert with wordnet.
--tasks picks a subset (a run is named by task, row, graph and seed, so subsets add up).

Prints accuracy and macro-F1 as mean +- sample std per row and writes benchmarks/kbert/results.json
(`merge_benchmark_result`, one key "quality/TASK" per task; --smoke writes
benchmarks/kbert/work/smoke/results.json).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/kbert/bench.py --seeds 1 2 3
Input construction alone (trees, soft positions and visible matrices of each task's training texts, in
batches of 32, MiniLM's tokenizer, max_length 128), key "construction", a minute:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/kbert/bench.py --construction
Quick check of the machinery on tiny-bert (two steps per run, minutes):
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/kbert/bench.py --smoke
The OpenBookQA rows compared question by question (sampling noise of the 500 dev questions): paired.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
ROOT = HERE.parents[1]
RESULTS = HERE / "results.json"
GRAPHS = ["wordnet", "conceptnet"]
ABLATIONS = {
    "kbert": [],
    "no_visible": ["kbert.visible_matrix=false"],
    "hard_positions": ["kbert.soft_positions=false"],
}
# The plain baseline reads the same data at the same max_length as K-BERT (which needs room for branches).
PLAIN = {
    "trec50": ("finetune/minilm_trec6", ["data.train=trec50:train", "data.eval=trec50:dev", "model.max_length=128"]),
    # OpenBookQA is multiple choice (kbert.choices): K-BERT with no branches is plain multiple-choice fine-tuning
    "obqa": ("kbert/minilm_obqa", ["kbert.max_entities=0"]),
    "sst2": ("finetune/minilm_sst2", ["model.max_length=128"]),
}
KBERT = {"trec50": "kbert/minilm_trec50", "obqa": "kbert/minilm_obqa", "sst2": "kbert/minilm_sst2"}
# Every row of a task, baseline included. OpenBookQA trains one epoch: a multiple-choice step holds 4 x 32
# trees (3 epochs of K-BERT with WordNet would take about an hour here, at 7.1 s a step); plain
# multiple-choice fine-tuning reaches 44.8% dev accuracy in one epoch, 52.4% in three (seed 1; RESULTS.md).
# A checkpoint every 50 steps (the default is once per epoch), so an interrupted run loses minutes, not the run.
TASK_SETS = {"obqa": ["train.epochs=1", "train.save_every=50"]}
TASKS = list(KBERT)
GRAPH_TASKS = ["trec50", "obqa"]  # every graph and ablation; SST-2 gets no_graph vs K-BERT with wordnet
CONSTRUCTION_TEXTS = 2000
SMOKE = ["model.name=tiny-bert", "train.max_steps=2", "train.eval_every=2", "data.max_eval_examples=32"]
# TREC-50 keeps its whole training split in the smoke test: every label
SMOKE_TASK = {"sst2": ["data.max_train_examples=256"], "obqa": ["data.max_train_examples=256"]}


def lmforge_run(run_dir: Path, recipe: str, overrides: list[str]) -> dict:
    """`lmforge run RECIPE OVERRIDES --run-dir run_dir` unless it finished; an interrupted run is resumed."""
    from records import run_once

    resuming = (run_dir / "config.yaml").is_file() and not (run_dir / "final.json").is_file()
    args = ["--resume"] if resuming else overrides
    command = [sys.executable, "-m", "lmforge", "run", recipe, *args, "--run-dir", str(run_dir)]
    run_once(command, run_dir / "final.json", run_dir.with_suffix(".log"), ROOT)
    return json.loads((run_dir / "final.json").read_text())


def plan(seeds: list[int], tasks: list[str]) -> list[tuple[str, str, str, int, str, list[str]]]:
    """(task, graph, row, seed, recipe, overrides) of every run, seeds outermost so rows share machine noise."""
    runs = []
    for seed in seeds:
        for task in tasks:
            recipe, extra = PLAIN[task]
            runs.append((task, "none", "no_graph", seed, recipe, extra))
            if task in GRAPH_TASKS:
                for graph in GRAPHS:
                    for row, switches in ABLATIONS.items():
                        runs.append((task, graph, row, seed, KBERT[task], [f"kbert.graph={graph}", *switches]))
            else:
                runs.append((task, "wordnet", "kbert", seed, KBERT[task], ["kbert.graph=wordnet"]))
    return runs


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_gain(own: list[dict], plain: list[dict]) -> dict:
    """Accuracy minus the no_graph row's on the same seed: mean and std over the seeds both rows have
    (a paired comparison: spread that two runs of one seed share cancels)."""
    plain_by_seed = {r["seed"]: r["accuracy"] for r in plain}
    gains = [r["accuracy"] - plain_by_seed[r["seed"]] for r in own if r["seed"] in plain_by_seed]
    if not gains or own[0]["row"] == "no_graph":
        return {}
    mean, std = mean_std(gains)
    return {"gain_mean": mean, "gain_std": std, "gain_seeds": len(gains)}


def quality(
    work: Path, records: Path, seeds: list[int], tasks: list[str], sets: list[str], task_sets: dict[str, list[str]]
) -> dict:
    """Every run of the plan; a run's row is kept in `records`/NAME.json (committed, small), and a run
    with a record is not run again."""
    rows = []
    for task, graph, row, seed, recipe, extra in plan(seeds, tasks):
        name = f"{task}-{row}-{graph}-s{seed}"
        record = records / f"{name}.json"
        if record.is_file():
            rows.append(json.loads(record.read_text()))
            continue
        # The row's own overrides come last and win over --set.
        overrides = [*TASK_SETS.get(task, []), *sets, *task_sets.get(task, []), f"train.seed={seed}", *extra]
        final = lmforge_run(work / name, recipe, overrides)
        knowledge = {}
        options = work / name / "final" / "kbert.json"
        if options.is_file():
            knowledge = json.loads(options.read_text())["eval_trees"]
        rows.append(
            {
                "task": task,
                "graph": graph,
                "row": row,
                "seed": seed,
                "accuracy": final["metrics"]["accuracy"],
                "macro_f1": final["metrics"]["macro_f1"],
                "steps": final["steps"],
                "train_seconds": final["train_seconds"],
                "eval_knowledge": knowledge,
            }
        )
        records.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(rows[-1], indent=1) + "\n")
    summary: dict[str, dict] = {}
    for task, graph, row in dict.fromkeys((r["task"], r["graph"], r["row"]) for r in rows):
        own = [r for r in rows if (r["task"], r["graph"], r["row"]) == (task, graph, row)]
        acc, acc_std = mean_std([r["accuracy"] for r in own])
        f1, f1_std = mean_std([r["macro_f1"] for r in own])
        summary[f"{task}/{graph}/{row}"] = {
            "runs": len(own),
            "accuracy_mean": acc,
            "accuracy_std": acc_std,
            "macro_f1_mean": f1,
            "macro_f1_std": f1_std,
            "s_per_step_mean": statistics.fmean(r["train_seconds"] / max(r["steps"], 1) for r in own),
            **paired_gain(own, [r for r in rows if (r["task"], r["row"]) == (task, "no_graph")]),
        }
    return {"seeds": seeds, "tasks": tasks, "overrides": sets, "runs": rows, "summary": summary}


def construction(tasks: list[str]) -> dict:
    """Sentences per second of `SentenceTreeBuilder.encode` (trees and model inputs) on each task's
    training texts (at most CONSTRUCTION_TEXTS), for each graph; a fresh builder per row, so the
    branch-text cache starts empty as in a run."""
    from lmforge.data.files import load_examples
    from lmforge.methods.kbert.graph import load_graph
    from lmforge.methods.kbert.tree import SentenceTreeBuilder, sentences_per_second
    from lmforge.models.classifier import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    graphs = {name: load_graph(name) for name in GRAPHS}
    rows = {}
    for task in tasks:
        texts = load_examples(f"{task}:train").texts[:CONSTRUCTION_TEXTS]
        for name, graph in graphs.items():
            builder = SentenceTreeBuilder(tokenizer, graph, max_entities=2, max_length=128)
            rate = sentences_per_second(builder, texts, batch_size=32)
            trees = builder.trees(texts)
            rows[f"{task}/{name}"] = {
                "sentences": len(texts),
                "sentences_per_second": rate,
                "tokens_mean": statistics.fmean(len(t.input_ids) for t in trees),
                "with_knowledge": sum(max(t.branch_ids) > 0 for t in trees) / len(trees),
            }
            print(f"{task} / {name}: {rate:,.0f} sentences/s over {len(texts):,} sentences")
    return rows


def print_tables(result: dict) -> None:
    def cell(mean: float, std: float | None) -> str:
        return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"

    print(f"\nK-BERT, seeds {result['seeds']}, overrides {result['overrides'] or 'none'}")
    for task in result["tasks"]:
        print(f"\n{task} dev")
        print("| graph | row | runs | accuracy (%) | macro-F1 (%) | accuracy - no_graph, paired (points) | s/step |")
        print("|---|---|---|---|---|---|---|")
        for key, s in result["summary"].items():
            if key.startswith(task + "/"):
                _, graph, row = key.split("/")
                gain = f"{cell(s['gain_mean'], s['gain_std'])} ({s['gain_seeds']})" if "gain_mean" in s else ""
                print(
                    f"| {graph} | {row} | {s['runs']} | {cell(s['accuracy_mean'], s['accuracy_std'])} | "
                    f"{cell(s['macro_f1_mean'], s['macro_f1_std'])} | {gain} | {s['s_per_step_mean']:.3f} |"
                )


def main() -> None:
    from records import benchmark_provenance, merge_benchmark_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS)
    parser.add_argument("--set", dest="sets", nargs="*", default=[], help="key=value overrides for every run")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="folder of the runs (reused)")
    parser.add_argument("--smoke", action="store_true", help="tiny-bert, two steps per run, one seed")
    parser.add_argument("--construction", action="store_true", help="only time input construction (key construction)")
    args = parser.parse_args()
    if args.construction:
        rows = construction(args.tasks)
        merge_benchmark_result(RESULTS, "construction", {**benchmark_provenance(), "rows": rows})
        return
    work, seeds, sets, task_sets = args.work, args.seeds, args.sets, {}
    if args.smoke:
        work, seeds, sets, task_sets = HERE / "work" / "smoke", args.seeds[:1], [*SMOKE, *sets], SMOKE_TASK
    records = work / "runs" if args.smoke else HERE / "runs"
    result = {**benchmark_provenance(), **quality(work, records, seeds, args.tasks, sets, task_sets)}
    print_tables(result)
    # A smoke result stays in the ignored work folder, out of the committed results. One key per task,
    # so that invocations over different tasks (e.g. --tasks trec50, later --tasks obqa) add up.
    for task in result["tasks"]:
        own = {
            **result,
            "tasks": [task],
            "runs": [r for r in result["runs"] if r["task"] == task],
            "summary": {key: s for key, s in result["summary"].items() if key.startswith(task + "/")},
        }
        merge_benchmark_result(work / "results.json" if args.smoke else RESULTS, f"quality/{task}", own)


if __name__ == "__main__":
    main()
