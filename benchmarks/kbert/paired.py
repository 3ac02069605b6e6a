"""Question by question: is a K-BERT row's difference from another row more than the dev set's sampling noise?

bench.py compares rows by their accuracy on the same seed; with 500 dev questions one run's accuracy
has a binomial sampling error of about 2.2 points, and three seeds do not shrink it, because every run
sees the same 500 questions. This script scores every finished OpenBookQA run of bench.py again
(benchmarks/kbert/work/NAME/final, with the trees its final/kbert.json describes), checks that it
reproduces the run's recorded accuracy, and compares rows on the questions themselves:

- per seed, the exact McNemar test: of the questions exactly one of the two runs gets right, does
  either run win more often than a fair coin would (two-sided binomial test, p = 0.5)?
- over the seeds, a paired bootstrap over questions: resample the 500 questions with replacement
  (10,000 times, seed 0), take the mean over seeds of (row A right - row B right) on each resample;
  the 2.5th and 97.5th percentiles, and the share of resamples on the far side of zero from the
  observed difference (a one-sided bootstrap p-value).

Each run's per-question correctness (a string of 0 and 1 in dev order) is written with the
statistics to benchmarks/kbert/results.json, key "paired/obqa", so they can be recomputed without
the models. Run after `bench.py --tasks obqa` (the run folders are its work folder):

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/kbert/paired.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
RESULTS = HERE / "results.json"
TASK = "obqa"
ROWS = ["no_graph/none", "kbert/wordnet", "no_visible/wordnet", "hard_positions/wordnet"]
ROWS += ["kbert/conceptnet", "no_visible/conceptnet", "hard_positions/conceptnet"]
# (row A, row B): does A differ from B? K-BERT against plain; each ablation against K-BERT with its graph.
COMPARISONS = [("kbert/wordnet", "no_graph/none"), ("kbert/conceptnet", "no_graph/none")]
COMPARISONS += [(f"{ablation}/{graph}", f"kbert/{graph}") for graph in ("wordnet", "conceptnet")
                for ablation in ("no_visible", "hard_positions")]  # fmt: skip
RESAMPLES = 10_000


def correct_answers(run_dir: Path) -> np.ndarray:
    """(questions,) bool: which dev questions the finished multiple-choice run answers right."""
    import dataclasses

    import torch

    from lmforge.data.files import load_examples
    from lmforge.methods.kbert.choices import choice_texts
    from lmforge.methods.kbert.config import KbertConfig
    from lmforge.methods.kbert.graph import load_graph
    from lmforge.methods.kbert.recipe import load_tree_options, predict_logits, tree_inputs
    from lmforge.methods.kbert.tree import SentenceTreeBuilder
    from lmforge.models.classifier import load_saved_classifier

    options = load_tree_options(run_dir)
    kb = KbertConfig(**{f.name: options[f.name] for f in dataclasses.fields(KbertConfig)})
    final = json.loads((run_dir / "final.json").read_text())
    letters = final["labels"]
    dev = load_examples(f"{TASK}:dev")
    model, tokenizer = load_saved_classifier(run_dir / "final")
    builder = SentenceTreeBuilder(tokenizer, load_graph(kb.graph), kb.max_entities, options["max_length"], kb.lemmas)
    trees = builder.trees(choice_texts(dev.texts, letters, dev.source))
    inputs = tree_inputs(model, tokenizer, kb)
    logits = predict_logits(model, trees, inputs, 64 * len(letters), torch.device("cpu")).reshape(len(dev), -1)
    right = logits.argmax(-1) == np.array([letters.index(label) for label in dev.labels])
    recorded = final["metrics"]["accuracy"]
    if abs(right.mean() - recorded) > 1e-9:
        raise SystemExit(f"{run_dir}: rescoring gives accuracy {right.mean():.4f}, the run recorded {recorded:.4f}")
    return right


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: of the a_only + b_only discordant questions, is a split this
    uneven likely under a fair coin?"""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """a, b: (seeds, questions) bool. Mean over seeds of accuracy(a) - accuracy(b), its 95% percentile
    interval over question resamples, and the share of resamples at zero or on its other side."""
    per_question = (a.astype(float) - b.astype(float)).mean(0)  # (questions,)
    idx = np.random.default_rng(seed).integers(0, len(per_question), size=(resamples, len(per_question)))
    means = per_question[idx].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    diff = float(per_question.mean())
    across = (means <= 0) if diff > 0 else (means >= 0)
    return {"diff": diff, "low": float(low), "high": float(high), "share_across_zero": float(across.mean())}


def compare(right: dict[str, dict[int, np.ndarray]], seeds: list[int]) -> list[dict]:
    rows = []
    for row_a, row_b in COMPARISONS:
        per_seed = []
        for seed in seeds:
            a, b = right[row_a][seed], right[row_b][seed]
            a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
            per_seed.append({"seed": seed, "a_only": a_only, "b_only": b_only, "p": mcnemar_exact(a_only, b_only)})
        a = np.stack([right[row_a][s] for s in seeds])
        b = np.stack([right[row_b][s] for s in seeds])
        rows.append({"a": row_a, "b": row_b, "per_seed": per_seed, "bootstrap": paired_bootstrap(a, b)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{TASK} dev, question by question")
    print("| A | B | A - B (points) | 95% interval | across zero | per seed: A only / B only, McNemar p |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        boot = r["bootstrap"]
        seeds = "; ".join(f"{s['a_only']} / {s['b_only']}, p {s['p']:.3f}" for s in r["per_seed"])
        diff, interval = f"{100 * boot['diff']:+.2f}", f"{100 * boot['low']:+.2f} to {100 * boot['high']:+.2f}"
        print(f"| {r['a']} | {r['b']} | {diff} | {interval} | {boot['share_across_zero']:.3f} | {seeds} |")


def main() -> None:
    from records import benchmark_provenance, merge_benchmark_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--work", type=Path, default=HERE / "work", help="bench.py's folder of runs")
    args = parser.parse_args()
    right: dict[str, dict[int, np.ndarray]] = {row: {} for row in ROWS}
    for row in ROWS:
        name, graph = row.split("/")
        for seed in args.seeds:
            run_dir = args.work / f"{TASK}-{name}-{graph}-s{seed}"
            if not (run_dir / "final.json").is_file():
                raise SystemExit(f"{run_dir}: no finished run; run bench.py --tasks {TASK} --seeds {seed} first")
            right[row][seed] = correct_answers(run_dir)
            print(f"{run_dir.name}: {right[row][seed].sum()} of {len(right[row][seed])} right", flush=True)
    rows = compare(right, args.seeds)
    print_table(rows)
    correct = {f"{row}/s{seed}": "".join(str(int(x)) for x in v) for row, by in right.items() for seed, v in by.items()}
    result = {
        **benchmark_provenance(),
        "seeds": args.seeds,
        "resamples": RESAMPLES,
        "comparisons": rows,
        "correct": correct,
    }
    merge_benchmark_result(RESULTS, f"paired/{TASK}", result)


if __name__ == "__main__":
    main()
