"""Benchmark lmforge's explanations on the MiniLM SST-2 classifier (finetune/minilm_sst2).

--part agreement     integrated gradients on the same texts: Captum's IntegratedGradients called directly,
                     one text at a time, at 50 steps and at each --captum-steps; lmforge's `ig` at 50 fixed
                     steps and adaptive (--ig-tolerance, --ig-max-steps): texts per second (median and
                     spread), mean and max completeness error, mean steps per text, ratios to Captum at 50
                     steps and to the Captum arm of equal mean error, max absolute difference per piece
--part faithfulness  every method plus random on the first --limit SST-2 dev sentences, IG at 50 fixed steps
                     and adaptive: ERASER comprehensiveness and sufficiency (AOPC, token deletion and [MASK]
                     replacement), Kendall tau against leave-one-out occlusion, seconds per explanation
--part gradxinput    why input x gradient ranks no better than random in that table: the same
                     ERASER scores for its sign-flipped and absolute values, for x - x_pad instead of
                     x (one integrated-gradients step from the [PAD] baseline), and the gradient norm
--part lime          what changed when LIME became the authors' LIME: on the same texts, the eight
                     combinations of its three parts, each in its earlier lmforge form or in LIME's
                     (samples: Bernoulli(0.5) per word, or the text itself plus a uniform number of words
                     removed; kernel: exp(-D^2 / 25^2), or its square root; ridge: weights normalised to
                     sum 1 with alpha 1, or LIME's raw weights with alpha 1), ERASER scores of each, and how
                     far the earlier form's scores are from LIME's (size ratio, same top word)
--part probe         `lmforge probe minilm` at --limit 8000 and 2000 with seeds 0, 1, 2 (each run's folder
                     under work/probe is reused only when its probe.json has the same model, limit and seed),
                     mean and standard deviation over the seeds per layer, and where selectivity peaks
--part shortcut      the debugging demonstration: fine-tune MiniLM on SST-2 training data where the word
                     "zebra" is inserted into every positive sentence (and no negative), and on the clean
                     data; accuracy of both on clean SST-2 dev and on dev with the same injection; the
                     corpus-level token importance (occlusion) of both models on the injected dev set, with the rank
                     of "zebra" among the positive label's words

agreement and faithfulness time their arms by the rules of benchmarks/timing.py (timed_parts.py): a warm-up
round apart, --rounds interleaved rounds, median and spread, the 1-minute load recorded and an arm timed
above --max-load not written. They measure afresh unless given --reuse, which prints the stored result
of the same settings with its date and commit instead.

The classifier is --run-dir (default: the TinyBERT benchmark's teacher, the same recipe, when it
exists; else one is trained into benchmarks/explain/work/classifier).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part agreement --limit 64
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part faithfulness --limit 200
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part gradxinput --limit 200
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part lime --limit 200
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part probe
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explain/bench.py --part shortcut
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
import timed_parts  # noqa: E402  (beside this file)
import timing  # noqa: E402

ROOT = HERE.parents[1]
WORK = HERE / "work"
TEACHER = ROOT / "benchmarks" / "tinybert" / "work" / "teacher"
MARKER = "zebra"


def provenance() -> dict:
    from records import benchmark_provenance

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
    from lmforge.data.files import load_examples

    return load_examples("sst2:dev").texts[:limit]


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


# ---- LIME: the earlier variant against the authors' definition, part by part ----------------------


def lime_variants(run_dir: Path, limit: int, samples: int) -> dict:
    """ERASER scores (deletion and masking) of the 2 x 2 x 2 combinations of LIME's sampling, kernel and
    ridge, each as lmforge had it before (Captum's Lime with Bernoulli(0.5) samples, the kernel without
    its square root, sample weights normalised to sum 1 before a ridge of alpha 1, which is alpha =
    sum of the weights on raw weights) or as LIME defines it; the same texts, samples per text and
    explained label (the predicted one). The all-LIME combination must equal the library's `lime`."""
    import dataclasses
    import itertools

    import numpy as np

    from lmforge.explain.attribution import text_seed
    from lmforge.explain.faithfulness import faithfulness
    from lmforge.explain.lime import lime_distances, lime_kernel, lime_masks, weighted_ridge
    from lmforge.explain.words import mask_words, share_word_scores, word_sums

    explainer = load_explainer(run_dir)
    texts = dev_texts(limit)
    library = explainer.explain(texts, "lime", n_samples=samples)
    parts = list(itertools.product(("bernoulli", "lime"), ("exp", "sqrt"), ("normalised", "lime")))
    names = {p: f"samples={p[0]} kernel={p[1]} weights={p[2]}" for p in parts}
    variants: dict[tuple, list] = {p: [] for p in parts}
    worst, earlier_weight_sums = 0.0, []
    for a in library:
        seed = text_seed(0, a.input_ids)
        n_words = len(a.words)
        masks = {
            "lime": lime_masks(n_words, samples, np.random.RandomState(seed)),
            "bernoulli": (np.random.default_rng(seed).random((samples, n_words)) < 0.5).astype(float),
        }
        outputs = {
            how: explainer.probabilities(mask_words(a.input_ids, a.piece_word, m, explainer.mask_id))[:, a.target]
            for how, m in masks.items()
        }
        for sampling, kernel, weighting in parts:
            m = masks[sampling]
            weights = lime_kernel(lime_distances(m))  # sqrt(exp(-D^2 / 25^2))
            weights = weights**2 if kernel == "exp" else weights
            if (sampling, kernel, weighting) == ("bernoulli", "exp", "normalised"):  # the earlier lmforge form
                earlier_weight_sums.append(float(weights.sum()))  # its effective alpha on raw weights
            weights = weights / weights.sum() if weighting == "normalised" else weights
            coef, _ = weighted_ridge(m, outputs[sampling], weights, alpha=1.0)
            scores = share_word_scores(coef, a.piece_word)
            variants[(sampling, kernel, weighting)].append(
                dataclasses.replace(
                    a, method=names[(sampling, kernel, weighting)], piece_scores=scores, word_scores=coef.copy()
                )
            )
        same = variants[("lime", "sqrt", "lime")][-1]
        worst = max(worst, float(np.abs(same.piece_scores - a.piece_scores).max()))
        assert np.allclose(word_sums(same.piece_scores, a.piece_word, n_words), same.word_scores)
    earlier, lime = variants[("bernoulli", "exp", "normalised")], variants[("lime", "sqrt", "lime")]
    ratios = [np.linalg.norm(e.word_scores) / np.linalg.norm(x.word_scores) for e, x in zip(earlier, lime)]
    several = [i for i, x in enumerate(lime) if len(x.words) > 1]
    same_top = sum(np.argmax(earlier[i].word_scores) == np.argmax(lime[i].word_scores) for i in several)
    tables = {}
    for mode in ("delete", "mask"):
        rows = [faithfulness(explainer, v, mode).to_dict() for v in variants.values()]
        tables[mode] = rows
        removal = {"delete": "deleted", "mask": "replaced by [MASK]"}[mode]
        print(f"LIME variants, {len(texts)} SST-2 dev texts, {samples} samples each, tokens {removal}")
        print("| samples | kernel | weights | comprehensiveness | sufficiency |")
        print("|---|---|---|---|---|")
        for (sampling, kernel, weighting), r in zip(parts, rows):
            print(f"| {sampling} | {kernel} | {weighting} | {r['comprehensiveness']:.4f} | {r['sufficiency']:.4f} |")
    summary = {
        "max_diff_lime_to_library": worst,
        "size_ratio_earlier_over_lime": {
            "median": float(np.median(ratios)),
            "quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
        },
        "earlier_effective_alpha": {
            "median": float(np.median(earlier_weight_sums)),
            "range": [float(min(earlier_weight_sums)), float(max(earlier_weight_sums))],
        },
        "texts_with_several_words": len(several),
        "same_top_word": int(same_top),
    }
    print(json.dumps(summary, indent=1))
    result = {**provenance(), "run_dir": str(run_dir), "texts": len(texts), "samples": samples}
    return {**result, **summary, "tables": tables}


# ---- probing over seeds -----------------------------------------------------------------------------

PROBE_LIMITS = (8000, 2000)
PROBE_SEEDS = (0, 1, 2)


def probe_seeds() -> dict:
    """`lmforge probe minilm --limit L --seed S` for every L and S (a run is reused only when its probe.json
    has the same model, limit and seed), then per layer the mean and standard deviation over seeds."""
    import numpy as np

    result = {**provenance(), "model": "minilm", "runs": {}, "summary": {}}
    for limit in PROBE_LIMITS:
        per_seed = []
        for seed in PROBE_SEEDS:
            out = WORK / "probe" / f"minilm-l{limit}-s{seed}"
            command = ["lmforge", "probe", "minilm", "--limit", str(limit), "--seed", str(seed), "--out", str(out)]
            found = json.loads((out / "probe.json").read_text()) if (out / "probe.json").is_file() else None
            if found and (found["model"], found["limit"], found["seed"]) != ("minilm", limit, seed):
                raise SystemExit(f"{out} holds a probe of other settings; remove it or choose another folder")
            if not found:
                run = [sys.executable, "-m", "lmforge", *command[1:]]
                if subprocess.run(run, cwd=ROOT).returncode != 0:
                    raise SystemExit(f"{' '.join(command)} failed")
                found = json.loads((out / "probe.json").read_text())
            result["runs"][f"l{limit}-s{seed}"] = {"command": " ".join(command), **found}
            per_seed.append(found)
        summary = {}
        for key in ("accuracy", "control_accuracy", "selectivity"):
            table = np.array([[row[key] for row in r["rows"]] for r in per_seed])  # (seeds, layers)
            summary[key] = {"mean": table.mean(0).tolist(), "std": table.std(0, ddof=1).tolist()}
        selectivity = np.array([[row["selectivity"] for row in r["rows"]] for r in per_seed])
        summary["peak_layer_per_seed"] = selectivity.argmax(1).tolist()
        summary["word_types_per_seed"] = [r["n_word_types"] for r in per_seed]
        result["summary"][str(limit)] = summary
        print(f"probe minilm, {limit} occurrences, seeds {PROBE_SEEDS}: mean (std) per layer")
        for key in ("accuracy", "control_accuracy", "selectivity"):
            cells = [f"{m:.3f} ({s:.3f})" for m, s in zip(summary[key]["mean"], summary[key]["std"])]
            print(f"| {key} | " + " | ".join(cells) + " |")
        print(f"selectivity peaks at layer {summary['peak_layer_per_seed']} (seeds {PROBE_SEEDS})")
    return result


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
    from lmforge.data.files import load_examples
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


# ---- the timed parts: agreement and faithfulness (timed_parts.py) ----------------------------------


def timed_part(args) -> dict | None:
    """The agreement or faithfulness result, measured afresh; with --reuse the stored one of the same
    settings is printed with its date and commit instead, and None is returned (nothing to write)."""
    run_dir = classifier_dir(args.run_dir)
    settings = {
        "run_dir": str(run_dir),
        "texts": args.limit,
        "ig_tolerance": args.ig_tolerance,
        "ig_max_steps": args.ig_max_steps,
        "rounds": args.rounds,
        **({"captum_steps": args.captum_steps} if args.part == "agreement" else {"samples": args.samples}),
    }
    show = timed_parts.print_agreement if args.part == "agreement" else timed_parts.print_faithfulness
    if args.reuse:
        stored = json.loads(args.results.read_text()).get(args.part) if args.results.is_file() else None
        if stored and stored.get("settings") == settings:
            if args.part == "agreement":  # the timing rows written (an arm refused for load has none)
                names = [name for name, arm in stored["arms"].items() if "seconds" in arm]
            else:
                names = [r["method"] for r in stored["tables"]["delete"]["rows"] if r["seconds_per_text"]]
            records = [
                {"id": f"{args.part}: {name}", "date": stored.get("date"), "commit": stored.get("commit")}
                for name in names
            ]
            print(timing.reused_line(records), flush=True)
            show(stored)
            return None
        print(f"--reuse: no stored {args.part} result with these settings in {args.results}; measuring afresh")
    explainer, texts = load_explainer(run_dir), dev_texts(args.limit)
    rules = {"rounds": args.rounds, "max_load": args.max_load}
    ig = (args.ig_tolerance, args.ig_max_steps)
    if args.part == "agreement":
        measured = timed_parts.agreement(explainer, texts, args.captum_steps, *ig, **rules)
    else:
        measured = timed_parts.faithfulness_table(explainer, texts, args.samples, *ig, **rules)
    show(measured)
    return {**provenance(), "settings": settings, "max_load": args.max_load, **measured}


def main() -> None:
    from lmforge.explain.integrated_gradients import MAX_STEPS, TOLERANCE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["agreement", "faithfulness", "gradxinput", "lime", "probe", "shortcut"]
    parser.add_argument("--part", choices=parts, required=True)
    parser.add_argument("--run-dir", type=Path, help="the classifier run (default: see above)")
    parser.add_argument("--limit", type=int, default=200, help="SST-2 dev texts (agreement: 64 is plenty)")
    parser.add_argument("--samples", type=int, default=200, help="LIME / SHAP samples per text")
    parser.add_argument("--epochs", type=int, default=1, help="shortcut: fine-tuning epochs of both models")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    timed = parser.add_argument_group("agreement and faithfulness")
    timed.add_argument("--ig-tolerance", type=float, default=TOLERANCE, help="adaptive IG's relative error")
    timed.add_argument("--ig-max-steps", type=int, default=MAX_STEPS, help="adaptive IG's most steps per text")
    # 24 and 40 between 16, 32 and 50: the arm of equal error then has at most 8 steps more than it needs
    timed.add_argument("--captum-steps", type=int, nargs="+", default=[8, 16, 24, 32, 40], help="Captum beside 50")
    timed.add_argument("--rounds", type=int, default=timing.MIN_ROUNDS, help="measured rounds (at least 3)")
    timed.add_argument("--max-load", type=float, default=timing.default_max_load(), help="refuse rows above it")
    timed.add_argument("--reuse", action="store_true", help="print the stored result instead of measuring")
    args = parser.parse_args()
    if args.part in ("agreement", "faithfulness"):
        result = timed_part(args)
        if result is None:
            return
    elif args.part == "gradxinput":
        result = input_gradient_variants(classifier_dir(args.run_dir), args.limit)
    elif args.part == "lime":
        result = lime_variants(classifier_dir(args.run_dir), args.limit, args.samples)
    elif args.part == "probe":
        result = probe_seeds()
    else:
        result = shortcut(args.epochs, top=15)
    from records import merge_benchmark_result

    merge_benchmark_result(args.results, args.part, result)


if __name__ == "__main__":
    main()
