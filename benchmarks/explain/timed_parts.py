"""The two parts of the explanations benchmark that report seconds: `agreement` and `faithfulness`.

Both follow the timing rules of benchmarks/timing.py (README "Rules for a timing row"): a warm-up round
apart, at least 3 measured rounds with the arms interleaved and the starting arm rotating, median and
spread per arm, the 1-minute load read at the start and end of every timed call. An arm any of whose
measured rounds ran above --max-load gets no timing: one line per such round says so, and its seconds are
not written. Attributions are deterministic (fixed seeds), so every round gives the same scores; the
scores come from the last round and need no rounds of their own.

agreement: integrated gradients on the same texts, each arm timed over all of them:
  captum N steps  Captum's IntegratedGradients called directly, one text per call, on the word embeddings
                  (the model adds position and type embeddings), N Gauss-Legendre steps (Captum's default
                  method), all N points in one pass; N = 50 (Captum's default) and each --captum-steps
  lmforge fixed   lmforge's `ig` with ig_steps=50: Captum's IntegratedGradients on batches of texts
  lmforge adaptive  lmforge's `ig` at its default: steps per text doubled from 8 until the relative
                  completeness error is at most --ig-tolerance (explain/integrated_gradients.py)
Same baseline ([CLS] / [SEP] kept, every other piece [PAD]) and target (the predicted label's
probability). lmforge's arms include what `Explainer.explain` does around IG (tokenizing, one forward
pass for the predicted labels); Captum's arms get the embeddings and targets prepared, untimed.
Completeness error of every arm is computed here the same way from its scores, |sum - (f(x) - f(x'))| /
max(|f(x) - f(x')|, GAP_FLOOR), with f(x) and f(x') from one untimed forward pass per text; the library's
own figure for its arms is recorded beside it. The Captum arm "of equal error" is the one with the fewest
steps whose mean error is at most the adaptive arm's.

faithfulness: every method plus random, IG twice (50 fixed steps, and adaptive): ERASER
comprehensiveness and sufficiency (token deletion and [MASK] replacement), Kendall tau against
leave-one-out occlusion, and seconds per text (median over the rounds, with spread).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import timing

FIXED_STEPS = 50  # Captum's default n_steps


def announced(name: str, arm: Callable[[], None]) -> Callable[[], None]:
    """`arm`, printing its wall time after each call, so that a long run shows where it is."""
    import time

    def call() -> None:
        started = time.perf_counter()
        arm()
        print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    return call


def timed_arms(arms: dict[str, Callable[[], None]], rounds: int, max_load: float) -> dict:
    """time_rounds over `arms`; per arm the median and spread of its seconds, or its refusal lines."""
    timed = timing.time_rounds({name: announced(name, arm) for name, arm in arms.items()}, rounds=rounds)
    refused: dict[str, list[str]] = {}
    for r in timed.rows:
        line = timing.load_refusal(f"{r.arm} (round {r.round})", r.load_start, r.load_end, max_load)
        if line:
            refused.setdefault(r.arm, []).append(line)
    for lines in refused.values():
        print("\n".join(lines), file=sys.stderr, flush=True)
    seconds = {arm: values for arm, values in timed.seconds().items() if arm not in refused}
    return {
        "summary": timing.summarize(seconds),
        "refused": refused,
        "order": timed.order(),
        "loads": [(r.arm, r.round, r.load_start, r.load_end) for r in timed.rows],
    }


def per_second(summary: dict, count: int) -> dict:
    """Items per second from an arm's seconds: at the median, and at the slowest and fastest round."""
    return {"median": count / summary["median"], "min": count / summary["max"], "max": count / summary["min"]}


# ---- agreement: IG, lmforge's fixed and adaptive steps against Captum per text ----------------------


def agreement(explainer, texts: list[str], captum_steps: list[int], tolerance: float, max_steps: int, **rules):
    """Scores, completeness errors and texts per second of every IG arm; `rules` = rounds, max_load."""
    import numpy as np
    import torch
    from captum.attr import IntegratedGradients

    from lmforge.explain.integrated_gradients import relative_completeness_error

    prepared = explainer.explain(texts, "random")  # untimed: token ids, pieces and the predicted labels
    embed = explainer.model.get_input_embeddings()
    forward = explainer.probabilities_of_embeddings
    captum = IntegratedGradients(forward)
    inputs, gaps = [], []  # per text: (x, x', mask, target); f(x) - f(x')
    for a in prepared:
        ids = torch.tensor([a.input_ids], device=explainer.device)  # (1, T)
        baseline_ids = ids.clone()
        baseline_ids[0, torch.as_tensor(np.flatnonzero(np.asarray(a.piece_word) >= 0))] = explainer.pad_id
        mask = torch.ones_like(ids)
        with torch.no_grad():
            x, x_base = embed(ids), embed(baseline_ids)  # (1, T, D)
            gaps.append(float(forward(x, mask)[0, a.target] - forward(x_base, mask)[0, a.target]))
        inputs.append((x, x_base, mask, a.target))

    scores: dict[str, list[np.ndarray]] = {}
    reported: dict[str, list] = {}  # the library's own steps and errors per text

    def captum_arm(steps: int) -> Callable[[], None]:
        def run() -> None:
            out = []
            for x, x_base, mask, target in inputs:
                raw = captum.attribute(
                    x, baselines=x_base, target=target, additional_forward_args=(mask,), n_steps=steps
                )
                out.append(raw.sum(-1)[0].detach().cpu().numpy())
            scores[f"captum {steps} steps"] = out

        return run

    def lmforge_arm(name: str, **options) -> Callable[[], None]:
        def run() -> None:
            got = explainer.explain(texts, "ig", ig_tolerance=tolerance, ig_max_steps=max_steps, **options)
            scores[name] = [a.piece_scores for a in got]
            reported[name] = [(a.ig_steps, a.ig_completeness_error) for a in got]

        return run

    steps_of = {f"captum {n} steps": n for n in sorted({FIXED_STEPS, *captum_steps})}
    arms = {name: captum_arm(n) for name, n in steps_of.items()}
    arms["lmforge fixed 50 steps"] = lmforge_arm("lmforge fixed 50 steps", ig_steps=FIXED_STEPS)
    arms["lmforge adaptive"] = lmforge_arm("lmforge adaptive")
    timed = timed_arms(arms, **rules)

    arm_stats = {}
    for name in arms:
        errors = [relative_completeness_error(float(s.sum()), g) for s, g in zip(scores[name], gaps)]
        stats = {"mean_completeness_error": float(np.mean(errors)), "max_completeness_error": float(np.max(errors))}
        if name in steps_of:
            stats["mean_steps"] = stats["mean_gradients"] = steps_of[name]
        else:
            steps = [s for s, _ in reported[name]]
            stats["mean_steps"] = float(np.mean(steps))
            # the trapezoid rule on n steps evaluates n + 1 points; Gauss-Legendre on n steps, n
            stats["mean_gradients"] = float(np.mean(steps)) + (name == "lmforge adaptive")
            stats["library_mean_completeness_error"] = float(np.mean([e for _, e in reported[name]]))
        if name in timed["summary"]:
            stats["seconds"] = timed["summary"][name]
            stats["texts_per_second"] = per_second(timed["summary"][name], len(texts))
        arm_stats[name] = stats

    adaptive_error = arm_stats["lmforge adaptive"]["mean_completeness_error"]
    as_good = [name for name in steps_of if arm_stats[name]["mean_completeness_error"] <= adaptive_error]
    equal_error = as_good[0] if as_good else None  # the fewest steps (steps_of is sorted)
    reference = f"captum {FIXED_STEPS} steps"
    pairs = [(reference, name) for name in arms if name != reference]
    if equal_error:
        pairs += [(equal_error, name) for name in arms if name.startswith("lmforge")]
    ratios = timing.median_ratios(timed["summary"], pairs)  # seconds(captum) / seconds(arm): texts/s ratio
    speedups = {f"{arm} over {ref}": ratios[f"{ref} / {arm}"] for ref, arm in pairs if f"{ref} / {arm}" in ratios}
    fixed, adaptive, captum_50 = (scores[n] for n in ("lmforge fixed 50 steps", "lmforge adaptive", reference))
    return {
        "texts": len(texts),
        "arms": arm_stats,
        "equal_error_captum_arm": equal_error,
        "speedup_over": speedups,
        "max_abs_difference": max(float(np.abs(a - b).max()) for a, b in zip(fixed, captum_50)),
        "max_abs_difference_adaptive": max(float(np.abs(a - b).max()) for a, b in zip(adaptive, captum_50)),
        "largest_score": max(float(np.abs(a).max()) for a in captum_50),
        "timing": {k: timed[k] for k in ("refused", "order", "loads")},
    }


def print_agreement(result: dict) -> None:
    print(
        f"IG on {result['texts']} SST-2 dev texts; texts/s: median, min-max over rounds; completeness error "
        "relative to |f(x) - f(x')|"
    )
    print("| arm | texts/s | min-max | mean steps | gradients / text | mean error | max error |")
    print("|---|---|---|---|---|---|---|")
    for name, s in result["arms"].items():
        rate = s.get("texts_per_second")
        speed = f"{rate['median']:.2f} | {rate['min']:.2f}-{rate['max']:.2f}" if rate else "refused | -"
        print(
            f"| {name} | {speed} | {s['mean_steps']:.1f} | {s['mean_gradients']:.1f} | "
            f"{s['mean_completeness_error']:.4f} | {s['max_completeness_error']:.4f} |"
        )
    print(f"Captum arm of equal mean error: {result['equal_error_captum_arm'] or 'none of the step counts tried'}")
    for pair, value in result["speedup_over"].items():
        print(f"  {pair}: {value:.2f}x texts/s")
    print(
        f"max |lmforge fixed - Captum 50| = {result['max_abs_difference']:.2e}, max |lmforge adaptive - Captum 50| = "
        f"{result['max_abs_difference_adaptive']:.2e} (largest score {result['largest_score']:.3f})"
    )


# ---- faithfulness: the ERASER table, with IG at fixed and adaptive steps ----------------------------


def faithfulness_table(explainer, texts: list[str], samples: int, tolerance: float, max_steps: int, **rules) -> dict:
    """ERASER scores of every method (IG twice) and its seconds per text; `rules` = rounds, max_load."""
    import numpy as np

    from lmforge.cli.explain import DEFAULT_EVAL_METHODS
    from lmforge.explain.faithfulness import faithfulness

    options = {"ig fixed 50 steps": {"ig_steps": FIXED_STEPS}, "ig adaptive": {}}
    methods = {"occlusion": "occlusion"}  # row name -> method; occlusion first: every tau is against it
    for m in DEFAULT_EVAL_METHODS:
        methods.update({name: "ig" for name in options} if m == "ig" else {m: m})
    methods["random"] = "random"
    attributions = {}

    def arm(name: str) -> Callable[[], None]:
        def run() -> None:
            extra = options.get(name, {})
            attributions[name] = explainer.explain(
                texts, methods[name], n_samples=samples, ig_tolerance=tolerance, ig_max_steps=max_steps, **extra
            )

        return run

    timed = timed_arms({name: arm(name) for name in methods}, **rules)
    ig_rows = {}
    for name in options:
        got = attributions[name]
        ig_rows[name] = {
            "mean_steps": float(np.mean([a.ig_steps for a in got])),
            "mean_completeness_error": float(np.mean([a.ig_completeness_error for a in got])),
            "max_completeness_error": float(np.max([a.ig_completeness_error for a in got])),
        }
    tables = {}
    for mode in ("delete", "mask"):
        rows = []
        for name, got in attributions.items():
            row = {**faithfulness(explainer, got, mode, attributions["occlusion"]).to_dict(), "method": name}
            s = timed["summary"].get(name)
            row["seconds_per_text"] = {k: s[k] / len(texts) for k in ("median", "min", "max", "iqr")} if s else None
            rows.append({**row, **ig_rows.get(name, {})})
        rows.sort(key=lambda r: -r["comprehensiveness"])
        tables[mode] = {"data": "sst2:dev", "texts": len(texts), "mode": mode, "rows": rows}
    return {
        "lime_shap_samples": samples,
        "tables": tables,
        "timing": {k: timed[k] for k in ("refused", "order", "loads")},
    }


def print_faithfulness(result: dict) -> None:
    for mode, table in result["tables"].items():
        removal = {"delete": "deleted", "mask": "replaced by [MASK]"}[mode]
        print(f"{table['texts']} SST-2 dev texts, tokens {removal}; s / text: median (min-max over rounds)")
        print("| method | comprehensiveness | sufficiency | tau vs leave-one-out | s / text |")
        print("|---|---|---|---|---|")
        for r in table["rows"]:
            tau = "-" if r["kendall_tau"] is None else f"{r['kendall_tau']:.3f}"
            s = r["seconds_per_text"]
            seconds = f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})" if s else "refused"
            print(f"| {r['method']} | {r['comprehensiveness']:.4f} | {r['sufficiency']:.4f} | {tau} | {seconds} |")
    for r in result["tables"]["delete"]["rows"]:
        if "mean_steps" in r:
            print(
                f"{r['method']}: {r['mean_steps']:.1f} steps per text, completeness error mean "
                f"{r['mean_completeness_error']:.4f}, max {r['max_completeness_error']:.4f}"
            )
