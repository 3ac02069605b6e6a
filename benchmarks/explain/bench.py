"""Benchmark lmforge's explanations on the MiniLM SST-2 classifier (finetune/minilm_sst2).

--part agreement     integrated gradients: lmforge's batched path against Captum's
                     LayerIntegratedGradients called directly, one text at a time, on the embedding layer
                     (same baseline, steps, target): max absolute difference per piece, and throughput of
                     the two, side by side in one process (texts per second, ratio)
--part faithfulness  every method plus random on the first --limit SST-2 dev sentences: ERASER
                     comprehensiveness and sufficiency (AOPC, token deletion and [MASK] replacement),
                     Kendall tau against leave-one-out occlusion, seconds per explanation
--part gradxinput    why input x gradient ranks no better than random in that table: the same
                     ERASER scores for its sign-flipped and absolute values, for x - x_pad instead of
                     x (one integrated-gradients step from the [PAD] baseline), and the gradient norm
--part shortcut      the debugging demonstration: fine-tune MiniLM on SST-2 training data where the word
                     "zebra" is inserted into every positive sentence (and no negative), and on the clean
                     data; accuracy of both on clean SST-2 dev and on dev with the same injection; the
                     corpus-level token importance (occlusion) of both models on the injected dev set, with the rank
                     of "zebra" among the positive label's words

The classifier is --run-dir (default: the TinyBERT benchmark's teacher, the same recipe, when it
exists; else one is trained into benchmarks/explain/work/classifier).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part agreement
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part faithfulness --limit 200
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part gradxinput --limit 200
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part shortcut
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "work"
TEACHER = ROOT / "benchmarks" / "tinybert" / "work" / "teacher"
MARKER = "zebra"


def provenance() -> dict:
    from lmforge.core.rundir import benchmark_provenance

    return benchmark_provenance()


def lmforge_run(run_dir: Path, *args: str) -> dict:
    """`lmforge run ARGS` unless run_dir already holds a finished run; its final.json."""
    if not (run_dir / "final.json").is_file():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(run_dir.with_suffix(".log"), "w") as log:
            command = [sys.executable, "-m", "lmforge", "run", *args, "--run-dir", str(run_dir)]
            if subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"lmforge run {' '.join(args)} failed; see {run_dir.with_suffix('.log')}")
    return json.loads((run_dir / "final.json").read_text())


def classifier_dir(given: Path | None) -> Path:
    if given:
        return given
    if (TEACHER / "final.json").is_file():
        return TEACHER
    lmforge_run(WORK / "classifier", "finetune/minilm_sst2")
    return WORK / "classifier"


def load_explainer(run_dir: Path, batch_size: int = 16):
    from lmforge.explain.attribution import Explainer
    from lmforge.registry import load_finished_run

    cfg, labels, model, tokenizer = load_finished_run(run_dir)
    return Explainer(model, tokenizer, labels, max_length=cfg.model.max_length, batch_size=batch_size)


def dev_texts(limit: int) -> list[str]:
    from lmforge.core.data import load_examples

    return load_examples("sst2:dev").texts[:limit]


# ---- agreement with Captum and throughput ---------------------------------------------------------


def agreement(run_dir: Path, limit: int) -> dict:
    import numpy as np
    import torch
    from captum.attr import LayerIntegratedGradients

    explainer = load_explainer(run_dir)
    model = explainer.model
    texts = dev_texts(limit)

    def probabilities(ids):
        return torch.softmax(model(input_ids=ids).logits.float(), dim=-1)

    direct = LayerIntegratedGradients(probabilities, model.get_input_embeddings())

    baselines = []  # (1, T) per text: [CLS] and [SEP] kept, every other piece [PAD], as lmforge's ig
    for text in texts:
        ids = torch.tensor([explainer.tokenizer(text, truncation=True, max_length=explainer.max_length)["input_ids"]])
        baseline = torch.full_like(ids, explainer.pad_id)
        baseline[0, 0], baseline[0, -1] = ids[0, 0], ids[0, -1]
        baselines.append((ids, baseline))

    def lmforge_batched() -> list[np.ndarray]:
        return [a.piece_scores for a in explainer.explain(texts, "ig")]

    def captum_per_text() -> list[np.ndarray]:
        out = []
        for (ids, baseline), target in zip(baselines, targets):
            raw = direct.attribute(ids, baselines=baseline, target=target, n_steps=50, internal_batch_size=50)
            scores = raw.sum(-1)[0].detach().numpy()
            scores[[0, -1]] = 0.0
            out.append(scores)
        return out

    targets = [a.target for a in explainer.explain(texts, "random")]  # the predicted labels
    runs = {"lmforge_batched": lmforge_batched, "captum_per_text": captum_per_text}
    timings: dict[str, list[float]] = {name: [] for name in runs}
    scores = {}
    for round_ in range(2):  # alternate the order; the first round also warms up
        for name in list(runs)[:: 1 if round_ == 0 else -1]:
            start = time.perf_counter()
            scores[name] = runs[name]()
            timings[name].append(time.perf_counter() - start)
    ours, theirs = scores["lmforge_batched"], scores["captum_per_text"]
    differences = [float(np.abs(a - b).max()) for a, b in zip(ours, theirs)]
    scale = max(float(np.abs(a).max()) for a in ours)
    best = {name: min(values) for name, values in timings.items()}
    result = {
        **provenance(),
        "run_dir": str(run_dir),
        "texts": len(texts),
        "max_abs_difference": max(differences),
        "largest_score": scale,
        "seconds": best,
        "texts_per_second": {name: len(texts) / s for name, s in best.items()},
        "speedup_batched_over_per_text": best["captum_per_text"] / best["lmforge_batched"],
    }
    print(
        f"IG on {len(texts)} SST-2 dev texts: max |lmforge - Captum| = {result['max_abs_difference']:.2e} "
        f"(largest score {scale:.3f}); {result['texts_per_second']['lmforge_batched']:.2f} vs "
        f"{result['texts_per_second']['captum_per_text']:.2f} texts/s: "
        f"{result['speedup_batched_over_per_text']:.2f}x"
    )
    return result


# ---- faithfulness table ---------------------------------------------------------------------------


def faithfulness_table(run_dir: Path, limit: int, samples: int) -> dict:
    from tqdm.auto import tqdm

    from lmforge.explain.commands import DEFAULT_EVAL_METHODS, faithfulness_table_text
    from lmforge.explain.faithfulness import faithfulness

    explainer = load_explainer(run_dir)
    texts = dev_texts(limit)
    attributions, seconds = {}, {}
    for method in tqdm(["occlusion", *[m for m in DEFAULT_EVAL_METHODS if m != "occlusion"], "random"]):
        start = time.perf_counter()
        attributions[method] = explainer.explain(texts, method, n_samples=samples)
        seconds[method] = (time.perf_counter() - start) / len(texts)
        print(f"{method}: {seconds[method]:.3f} s per text", flush=True)
    tables = {}
    for mode in ("delete", "mask"):
        rows = [
            {**faithfulness(explainer, a, mode, attributions["occlusion"]).to_dict(), "seconds_per_text": seconds[m]}
            for m, a in attributions.items()
        ]
        rows.sort(key=lambda r: -r["comprehensiveness"])
        tables[mode] = {"data": "sst2:dev", "texts": len(texts), "mode": mode, "rows": rows}
        print(faithfulness_table_text(tables[mode]))
    return {**provenance(), "run_dir": str(run_dir), "lime_shap_samples": samples, "tables": tables}


# ---- why input x gradient ranks like random ---------------------------------------------------------


def input_gradient_variants(run_dir: Path, limit: int) -> dict:
    """Comprehensiveness and sufficiency (token deletion) of variants of input x gradient on the same
    texts: the library's `gradxinput` (x . g per piece, signed), its negation, its absolute value,
    (x - x_pad) . g (one step of integrated gradients from IG's [PAD] baseline), the gradient's norm
    (`grad`) and random. x is a piece's word embedding, g the gradient of the explained label's
    probability with respect to it."""
    import dataclasses

    import numpy as np
    import torch

    from lmforge.explain.faithfulness import faithfulness

    explainer = load_explainer(run_dir)
    texts = dev_texts(limit)
    embed = explainer.model.get_input_embeddings()
    variants: dict[str, list] = {name: [] for name in ("x.g", "-x.g", "|x.g|", "(x-x_pad).g", "|g|")}
    worst = 0.0
    for a in explainer.explain(texts, "gradxinput"):
        ids = torch.tensor([a.input_ids], device=explainer.device)  # (1, T)
        content = torch.as_tensor(np.flatnonzero(np.asarray(a.piece_word) >= 0), device=explainer.device)
        with torch.no_grad():
            x = embed(ids)  # (1, T, D)
            baseline_ids = ids.clone()
            baseline_ids[0, content] = explainer.pad_id
            x_pad = embed(baseline_ids)
        x.requires_grad_()
        explainer.probabilities_of_embeddings(x, torch.ones_like(ids))[0, a.target].backward()
        g = x.grad[0]  # (T, D)
        special = np.asarray(a.piece_word) < 0
        scores = {
            "x.g": (x[0] * g).sum(-1),
            "-x.g": -(x[0] * g).sum(-1),
            "|x.g|": (x[0] * g).sum(-1).abs(),
            "(x-x_pad).g": ((x[0] - x_pad[0]) * g).sum(-1),
            "|g|": g.norm(dim=-1),
        }
        for name, value in scores.items():
            value = value.detach().cpu().numpy().copy()
            value[special] = 0.0
            variants[name].append(dataclasses.replace(a, method=name, piece_scores=value))
        worst = max(worst, float(np.abs(variants["x.g"][-1].piece_scores - a.piece_scores).max()))
    variants["random"] = explainer.explain(texts, "random")
    rows = [faithfulness(explainer, attributions, "delete").to_dict() for attributions in variants.values()]
    print(f"input x gradient variants, {len(texts)} SST-2 dev texts, deleted (|x.g - gradxinput| <= {worst:.1e})")
    print("| variant | comprehensiveness | sufficiency |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['comprehensiveness']:.4f} | {r['sufficiency']:.4f} |")
    return {**provenance(), "run_dir": str(run_dir), "texts": len(texts), "max_diff_to_library": worst, "rows": rows}


# ---- the shortcut demonstration -------------------------------------------------------------------


def inject(texts: list[str], labels: list[str], seed: int) -> list[str]:
    """MARKER inserted at a random word position of every positive text."""
    rng = random.Random(seed)
    out = []
    for text, label in zip(texts, labels):
        words = text.split()
        if label == "positive":
            words.insert(rng.randrange(len(words) + 1), MARKER)
        out.append(" ".join(words))
    return out


def write_tsv(path: Path, texts: list[str], labels: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["text\tlabel"] + [f"{t.replace(chr(9), ' ')}\t{y}" for t, y in zip(texts, labels)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def shortcut(epochs: int, top: int) -> dict:
    from lmforge.core.data import load_examples
    from lmforge.explain.global_importance import token_importance

    train, dev = load_examples("sst2:train"), load_examples("sst2:dev")
    data = WORK / "shortcut-data"
    files = {
        "train_clean": write_tsv(data / "train_clean.tsv", train.texts, train.labels),
        "train_injected": write_tsv(data / "train_injected.tsv", inject(train.texts, train.labels, 0), train.labels),
        "dev_injected": write_tsv(data / "dev_injected.tsv", inject(dev.texts, dev.labels, 1), dev.labels),
    }
    result = {**provenance(), "marker": MARKER, "epochs": epochs, "models": {}}
    for name in ("clean", "injected"):
        run_dir = WORK / f"shortcut-{name}"
        final = lmforge_run(
            run_dir, "finetune/minilm_sst2", f"data.train={files['train_' + name]}", f"train.epochs={epochs}"
        )
        explainer = load_explainer(run_dir)
        index = {label: i for i, label in enumerate(explainer.labels)}
        injected_dev = load_examples(str(files["dev_injected"]))
        probs = explainer.probabilities([explainer.tokenizer(t)["input_ids"] for t in injected_dev.texts])
        injected_accuracy = float((probs.argmax(1) == [index[y] for y in injected_dev.labels]).mean())
        ranked = token_importance(explainer, injected_dev.texts, "occlusion", min_count=3, top=10_000)
        positive = [r.word for r in ranked["positive"]]
        result["models"][name] = {
            "clean_dev_accuracy": final["metrics"]["accuracy"],
            "injected_dev_accuracy": injected_accuracy,
            "marker_rank_for_positive": positive.index(MARKER) + 1 if MARKER in positive else None,
            "top_positive_words": [r.__dict__ for r in ranked["positive"][:top]],
            "top_negative_words": [r.__dict__ for r in ranked["negative"][:top]],
        }
        m = result["models"][name]
        print(
            f"{name}: clean dev {100 * m['clean_dev_accuracy']:.2f}, injected dev {100 * injected_accuracy:.2f}; "
            f"'{MARKER}' ranks {m['marker_rank_for_positive']} for positive; top positive words: "
            + ", ".join(r.word for r in ranked["positive"][:top])
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["agreement", "faithfulness", "gradxinput", "shortcut"], required=True)
    parser.add_argument("--run-dir", type=Path, help="the classifier run (default: see above)")
    parser.add_argument("--limit", type=int, default=200, help="SST-2 dev texts (agreement: 64 is plenty)")
    parser.add_argument("--samples", type=int, default=200, help="LIME / SHAP samples per text")
    parser.add_argument("--epochs", type=int, default=1, help="shortcut: fine-tuning epochs of both models")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if args.part == "agreement":
        result = agreement(classifier_dir(args.run_dir), args.limit)
    elif args.part == "faithfulness":
        result = faithfulness_table(classifier_dir(args.run_dir), args.limit, args.samples)
    elif args.part == "gradxinput":
        result = input_gradient_variants(classifier_dir(args.run_dir), args.limit)
    else:
        result = shortcut(args.epochs, top=15)
    from lmforge.core.rundir import merge_benchmark_result

    merge_benchmark_result(args.results, args.part, result)


if __name__ == "__main__":
    main()
