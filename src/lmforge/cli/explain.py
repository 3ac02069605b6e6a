"""The explanation commands of the CLI: explain, explain-eval, explain-global, probe.

Each `add_*` registers a subcommand on the CLI's subparsers; torch, transformers and Captum are
imported inside the handlers so that `lmforge --help` stays fast.
"""

from __future__ import annotations

import json
import sys
import time
from html import escape
from pathlib import Path

from lmforge.config import SEED_RANGE, cli_number
from lmforge.errors import UserError
from lmforge.explain.methods import CAUSAL_METHODS, METHODS, PERTURBATION_METHODS, REDUCTIONS
from lmforge.explain.probing import PROPERTIES

AT_LEAST_ONE = cli_number(int, min=1)
DEFAULT_EVAL_METHODS = ["grad", "gradxinput", "ig", "smoothgrad", "attention", "rollout", "occlusion", "lime", "shap"]


def add_explain_parsers(commands) -> None:
    p = commands.add_parser(
        "explain",
        help="explain a finished run's prediction, or a causal LM's answer to a prompt: per-word attributions",
        description="Attribute a classifier's prediction to the words of each text, or a causal LM's answer to the "
        "words of its prompt: a coloured heat map in the terminal and an HTML page (words shaded, raw per-piece "
        "values). Green supports the explained label (makes the answer more likely), red speaks against it. For a "
        "causal LM (tiny-gpt2, gemma-3-270m, a causal-LM folder or run) the texts are prompts, the explained "
        "quantity is log p(answer | prompt), and the methods are grad, gradxinput, ig and occlusion.",
        epilog='examples: lmforge explain runs/finetune-minilm_sst2-... "a gorgeous, witty film" --method ig | '
        'lmforge explain gemma-3-270m "The capital of France is" --answer " Paris" --method occlusion',
    )
    p.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR_OR_CAUSAL_LM",
        help="a finished classifier run, or a causal LM (tiny-gpt2, gemma-3-270m, a causal-LM folder or run)",
    )
    p.add_argument("texts", nargs="*", help="texts to explain (prompts, for a causal LM)")
    p.add_argument("--file", type=Path, help="a text file (one text per line) or a .jsonl/.csv/.tsv file")
    p.add_argument("--text-column", default="text", help="text column when --file is jsonl/csv/tsv")
    p.add_argument("--method", default="ig", choices=METHODS, help="attribution method (default: %(default)s)")
    p.add_argument("--target", help="label to explain (default: the predicted label); classifiers only")
    p.add_argument("--samples", type=AT_LEAST_ONE, default=200, help="LIME / SHAP samples per text (default: 200)")
    p.add_argument(
        "--html",
        type=Path,
        help="HTML page to write (default: RUN_DIR/explanations/<method>-<time>.html; for a causal LM that is not "
        "a run folder: runs/explain/<model>-<method>-<time>.html)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per text instead of the heat map (for ig: with ig_steps and ig_completeness_error)",
    )
    add_ig_options(p)
    causal = p.add_argument_group("causal LMs")
    causal.add_argument(
        "--answer",
        action="append",
        help="the answer to explain, with its leading space (' Paris'); once per prompt, in order "
        "(default: the model's greedy answer)",
    )
    causal.add_argument(
        "--max-new-tokens", type=AT_LEAST_ONE, default=16, help="greedy answer's length at most (default: 16)"
    )
    causal.add_argument(
        "--stop", action="append", help="the greedy answer ends before this string (repeatable; default: a newline)"
    )
    causal.add_argument(
        "--reduction", choices=REDUCTIONS, default="sum", help="sum or mean of the answer tokens' log-probabilities"
    )
    causal.add_argument(
        "--per-token", action="store_true", help="also attribute each answer token (a matrix in the HTML page)"
    )
    p.set_defaults(handler=cmd_explain)

    p = commands.add_parser(
        "explain-eval",
        help="compare attribution methods by faithfulness (ERASER comprehensiveness / sufficiency)",
        description="Explain the model's prediction on each text of a dataset with every method, then measure "
        "comprehensiveness (higher is better) and sufficiency (lower is better) as AOPC over the top 1/5/10/20/50%% "
        "of tokens (DeYoung et al. 2020), and Kendall's tau against leave-one-out occlusion. A random-attribution "
        "row is always included as the floor.",
        epilog="example: lmforge explain-eval RUN_DIR --data sst2:dev --limit 200 --methods ig grad attention",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--data", required=True, help="builtin split (sst2:dev) or a .jsonl/.csv/.tsv file")
    p.add_argument("--text-column", default="text", help="text column in a user file (default: text)")
    p.add_argument("--methods", nargs="+", default=DEFAULT_EVAL_METHODS, choices=METHODS, metavar="METHOD")
    p.add_argument("--limit", type=int, default=200, help="first N texts (default: 200)")
    p.add_argument("--mode", choices=["delete", "mask"], default="delete", help="how tokens are removed")
    p.add_argument("--samples", type=AT_LEAST_ONE, default=200, help="LIME / SHAP samples per text (default: 200)")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/explain-eval)")
    p.set_defaults(handler=cmd_explain_eval)

    p = commands.add_parser(
        "explain-global",
        help="which words drive each label across a dataset (corpus-level token importance)",
        description="Explain the predicted label of every text and add up each word's scores per label. Words "
        "that push a label across the whole corpus rank first: the way to spot a shortcut the model learned.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--data", required=True, help="builtin split (sst2:dev) or a .jsonl/.csv/.tsv file")
    p.add_argument("--text-column", default="text", help="text column in a user file (default: text)")
    p.add_argument("--method", default="occlusion", choices=METHODS, help="attribution method (default: %(default)s)")
    p.add_argument("--limit", type=AT_LEAST_ONE, help="first N texts (default: all)")
    p.add_argument("--top", type=AT_LEAST_ONE, default=15, help="words shown per label (default: 15)")
    p.add_argument("--min-count", type=AT_LEAST_ONE, default=3, help="ignore words seen fewer times (default: 3)")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/explain-global)")
    p.set_defaults(handler=cmd_explain_global)


def add_ig_options(p) -> None:
    ig = p.add_argument_group(
        "integrated gradients (--method ig)",
        "By default each text's steps are chosen by its completeness error, |sum of scores - (p(x) - "
        "p(baseline))| / |p(x) - p(baseline)|: the trapezoid rule from 8 steps, doubled (16, 32, ...) until the "
        "error is within --ig-tolerance or the steps reach --ig-max-steps (Sundararajan et al. 2017, section 3). "
        "Each text's steps and error are reported.",
    )
    ig.add_argument(
        "--ig-tolerance",
        metavar="ERROR",
        type=cli_number(float, min=0.0),
        help="relative completeness error at which a text stops refining (default: 0.05, the paper's 'within 5%%')",
    )
    ig.add_argument(
        "--ig-max-steps",
        metavar="N",
        type=cli_number(int, min=8),
        help="most steps a text may use; refinement stops at the largest 8 x 2^k not above it (default: 256, "
        "inside the paper's 20-300)",
    )
    ig.add_argument(
        "--ig-steps",
        metavar="N",
        type=AT_LEAST_ONE,
        help="fixed steps instead: N Gauss-Legendre steps for every text, Captum's IntegratedGradients exactly "
        "(the earlier behaviour at 50); for a causal LM the only IG option (default there: 50)",
    )


def ig_options(args) -> dict:
    """The IG keyword arguments of Explainer.explain from the command line; only those given."""
    if args.method != "ig" and (args.ig_steps, args.ig_tolerance, args.ig_max_steps) != (None, None, None):
        raise UserError(f"--ig-steps, --ig-tolerance and --ig-max-steps apply to --method ig, not {args.method}")
    if args.ig_steps is not None and (args.ig_tolerance, args.ig_max_steps) != (None, None):
        raise UserError("--ig-steps fixes the steps; --ig-tolerance and --ig-max-steps apply without it")
    given = {"ig_steps": args.ig_steps, "ig_tolerance": args.ig_tolerance, "ig_max_steps": args.ig_max_steps}
    return {key: value for key, value in given.items() if value is not None}


# ---- explain ------------------------------------------------------------------------------------


def _explainer(run_dir: Path, command: str):
    from lmforge.data.classify import refuse_pair_run
    from lmforge.explain.attribution import Explainer, require_captum
    from lmforge.registry import load_finished_run

    require_captum()
    cfg, labels, model, tokenizer = load_finished_run(run_dir, classifier_command=command)
    refuse_pair_run(cfg.data, run_dir, command)
    return Explainer(model, tokenizer, labels, max_length=cfg.model.max_length)


def _texts(spec: str, text_column: str, limit: int | None) -> tuple[list[str], str]:
    """The texts of a builtin split (dev by default) or of a user file; no labels needed."""
    from lmforge.data.files import SUFFIXES, load_examples, read_texts

    if Path(spec).suffix.lower() in SUFFIXES:
        texts, source = read_texts(Path(spec), text_column), spec
    else:
        examples = load_examples(spec, default_split="dev")
        texts, source = examples.texts, examples.source
    texts = [t for t in texts if t.strip()][: limit or None]
    if not texts:
        raise UserError(f"{spec}: no texts to explain")
    return texts, source


def cmd_explain(args) -> int:
    from lmforge.core.report import html_page
    from lmforge.core.rundir import check_output_file, write_text_atomic
    from lmforge.data.files import read_texts
    from lmforge.explain.render import STYLE, attribution_html, terminal_heatmap
    from lmforge.models.causal_lm import is_causal_lm

    texts = list(args.texts) + (read_texts(args.file, args.text_column) if args.file else [])
    if not texts:
        raise UserError("nothing to explain: give texts as arguments or --file")
    if args.html is not None:
        check_output_file(args.html, "--html")
    ig = ig_options(args)
    if is_causal_lm(str(args.run_dir)):
        return explain_prompts(args, texts)
    if args.answer:
        raise UserError(f"--answer applies to a causal LM; {args.run_dir} is not one (a classifier run is explained)")
    explainer = _explainer(args.run_dir, "explain")
    attributions = explainer.explain(texts, args.method, args.target, n_samples=args.samples, **ig)
    for a in attributions:
        print(json.dumps(a.to_dict()) if args.json else terminal_heatmap(a))
    out = args.html or args.run_dir / "explanations" / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = f"<h1>Explanations: {escape(args.method)}</h1><p>Run <code>{escape(str(args.run_dir))}</code></p>"
    write_text_atomic(
        out, html_page(f"explain {args.method}", body + "".join(map(attribution_html, attributions)), STYLE)
    )
    print(f"written: {out}", file=sys.stderr)
    return 0


def explain_prompts(args, prompts: list[str]) -> int:
    """`lmforge explain CAUSAL_LM PROMPT... [--answer A]...`: the answer's log-probability attributed to the
    prompt's words (explain/causal.py)."""
    from lmforge.core.report import html_page
    from lmforge.core.rundir import write_text_atomic
    from lmforge.explain.causal import PromptExplainer
    from lmforge.explain.render import STYLE, prompt_attribution_html, prompt_terminal_heatmap
    from lmforge.models.causal_lm import load_causal_lm
    from lmforge.models.classifier import check_model_folder
    from lmforge.registry import quiet_libraries

    name = str(args.run_dir)
    if args.method not in CAUSAL_METHODS:
        raise UserError(f"--method {args.method}: a causal LM is explained with {', '.join(CAUSAL_METHODS)}")
    if args.target is not None:
        raise UserError("--target applies to classifier runs; for a causal LM give the answer with --answer")
    if args.answer is not None and len(args.answer) != len(prompts):
        raise UserError(f"{len(args.answer)} --answer for {len(prompts)} prompts: give one per prompt, or none")
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if (args.ig_tolerance, args.ig_max_steps) != (None, None):
        raise UserError("--ig-tolerance and --ig-max-steps apply to classifier runs; a causal LM's ig uses --ig-steps")
    quiet_libraries()
    import torch

    check_model_folder(name)
    model, tokenizer = load_causal_lm(name)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    explainer = PromptExplainer(model, tokenizer)
    attributions = explainer.explain(
        prompts,
        args.answer,
        args.method,
        reduction=args.reduction,
        per_token=args.per_token,
        max_new_tokens=args.max_new_tokens,
        stop=args.stop if args.stop is not None else ("\n",),
        n_steps=args.ig_steps or 50,
    )
    for a in attributions:
        print(json.dumps(a.to_dict()) if args.json else prompt_terminal_heatmap(a))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(name).expanduser()
    if (path / "config.yaml").is_file():  # a finished run: beside its other outputs
        out = args.html or path / "explanations" / f"{args.method}-{stamp}.html"
    else:
        folder = path.resolve()
        if folder.name == "final":  # a run's final/ folder: named after the run
            folder = folder.parent
        label = folder.name if path.is_dir() else name.strip("/").replace("/", "-")
        out = args.html or Path("runs") / "explain" / f"{label}-{args.method}-{stamp}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = f"<h1>Explanations: {escape(args.method)}</h1><p>Causal LM <code>{escape(name)}</code></p>"
    page = html_page(f"explain {args.method}", body + "".join(map(prompt_attribution_html, attributions)), STYLE)
    write_text_atomic(out, page)
    print(f"written: {out}", file=sys.stderr)
    return 0


# ---- explain-eval -------------------------------------------------------------------------------


def cmd_explain_eval(args) -> int:
    from lmforge.core.console import progress_bar
    from lmforge.core.rundir import check_output_folder
    from lmforge.explain.faithfulness import faithfulness

    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.out is not None:
        check_output_folder(args.out, "--out")
    texts, source = _texts(args.data, args.text_column, args.limit)
    explainer = _explainer(args.run_dir, "explain-eval")
    methods = list(dict.fromkeys([*args.methods, "random"]))
    print(f"{source}: {len(texts)} texts, methods {', '.join(methods)}", file=sys.stderr)
    reference = None
    rows = []
    for method in progress_bar(["occlusion", *[m for m in methods if m != "occlusion"]], desc="methods"):
        started = time.perf_counter()
        attributions = explainer.explain(texts, method, n_samples=args.samples, progress=True)
        seconds = (time.perf_counter() - started) / len(texts)
        if method == "occlusion":
            reference = attributions  # leave-one-out: the reference of Kendall's tau
            if method not in methods:
                continue
        row = faithfulness(explainer, attributions, args.mode, reference).to_dict()
        rows.append({**row, "seconds_per_text": seconds})
    rows.sort(key=lambda r: -r["comprehensiveness"])
    result = {"data": source, "texts": len(texts), "mode": args.mode, "lime_shap_samples": args.samples, "rows": rows}
    out = args.out or args.run_dir / "explain-eval"
    name = f"{source.replace(':', '-').replace('/', '-')}-{args.mode}"
    _write(out, name, result, "Faithfulness of explanations", faithfulness_table_html(result))
    print(faithfulness_table_text(result))
    if rows[-1]["method"] != "random":
        print("note: random attributions did not come out last on comprehensiveness", file=sys.stderr)
    print(f"written: {out / (name + '.json')} and .html", file=sys.stderr)
    return 0


def _tau(value) -> str:
    return "-" if value is None else f"{value:.3f}"


REMOVAL = {"delete": "deleted", "mask": "replaced by [MASK]"}  # how `--mode` removes tokens, in words


def faithfulness_table_text(result: dict) -> str:
    lines = [
        f"{result['data']}, {result['texts']} texts, tokens {REMOVAL[result['mode']]}; "
        "comprehensiveness higher is better, sufficiency lower is better",
        f"{'method':<12}{'comprehensiveness':>19}{'sufficiency':>13}{'tau vs LOO':>12}{'s / text':>10}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['method']:<12}{r['comprehensiveness']:>19.4f}{r['sufficiency']:>13.4f}"
            f"{_tau(r['kendall_tau']):>12}{r['seconds_per_text']:>10.3f}"
        )
    return "\n".join(lines)


def faithfulness_table_html(result: dict) -> str:
    head = "<tr><th>method</th><th>comprehensiveness (AOPC) ↑</th><th>sufficiency (AOPC) ↓</th>"
    head += "<th>Kendall tau vs leave-one-out</th><th>seconds per text</th></tr>"
    rows = "".join(
        f"<tr><td>{escape(r['method'])}</td><td class='num'>{r['comprehensiveness']:.4f}</td>"
        f"<td class='num'>{r['sufficiency']:.4f}</td><td class='num'>{_tau(r['kendall_tau'])}</td>"
        f"<td class='num'>{r['seconds_per_text']:.3f}</td></tr>"
        for r in result["rows"]
    )
    return (
        f"<p>{escape(result['data'])}: {result['texts']} texts; tokens {escape(REMOVAL[result['mode']])} "
        "at the token-id level; AOPC over the top 1, 5, 10, 20 and 50% of tokens (DeYoung et al. 2020).</p>"
        f"<table>{head}{rows}</table>"
    )


# ---- explain-global -----------------------------------------------------------------------------


def cmd_explain_global(args) -> int:
    from lmforge.core.rundir import check_output_folder
    from lmforge.explain.global_importance import token_importance

    if args.out is not None:
        check_output_folder(args.out, "--out")
    if args.method in PERTURBATION_METHODS:
        print(f"note: {args.method} runs many forward passes per text; this can take a while", file=sys.stderr)
    texts, source = _texts(args.data, args.text_column, args.limit)
    explainer = _explainer(args.run_dir, "explain-global")
    ranked = token_importance(explainer, texts, args.method, args.min_count, args.top, progress=True)
    result = {
        "data": source,
        "texts": len(texts),
        "method": args.method,
        "labels": {label: [r.__dict__ for r in rows] for label, rows in ranked.items()},
    }
    lines, sections = [], []
    for label, rows in ranked.items():
        lines.append(f"{label}: " + ", ".join(f"{r.word} {r.total:+.3f} ({r.count}x)" for r in rows))
        cells = "".join(
            f"<tr><td>{escape(r.word)}</td><td class='num'>{r.total:+.4f}</td><td class='num'>{r.count}</td>"
            f"<td class='num'>{r.mean:+.4f}</td></tr>"
            for r in rows
        )
        sections.append(
            f"<h2>{escape(label)}</h2><table><tr><th>word</th><th>total</th><th>count</th><th>mean</th></tr>"
            f"{cells}</table>"
        )
    out = args.out or args.run_dir / "explain-global"
    name = f"{source.replace(':', '-').replace('/', '-')}-{args.method}"
    intro = f"<p>{escape(source)}: {len(texts)} texts, {escape(args.method)} attributions to the predicted label.</p>"
    _write(out, name, result, "Token importance per label", intro + "".join(sections))
    print("\n".join(lines))
    print(f"written: {out / (name + '.json')} and .html", file=sys.stderr)
    return 0


def _write(folder: Path, name: str, result: dict, title: str, body: str) -> None:
    from lmforge.core.report import html_page
    from lmforge.core.rundir import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(folder / f"{name}.html", html_page(title, f"<h1>{escape(title)}</h1>{body}"))


# ---- probe ----------------------------------------------------------------------------------------


def add_probe_parser(subparsers) -> None:
    """Register `lmforge probe MODEL_OR_RUN_DIR ...` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "probe",
        help="probe each layer for a linguistic property, with a control task (Hewitt & Liang 2019)",
        description="Train a linear probe on every layer's word representations to predict a property, and the "
        "same probe on a control task (random labels per word type). Prints accuracy, control accuracy and "
        "selectivity per layer; writes probe.json and probe.html.",
        epilog="examples: lmforge probe minilm | lmforge probe runs/lora-minilm_sst2-20250101-120000",
    )
    model_help = "a model name (minilm, tiny-bert), a Hugging Face folder, or a finished run folder (its model)"
    p.add_argument("model", metavar="MODEL_OR_RUN_DIR", help=model_help)
    p.add_argument("--property", default="wordnet-pos", help=f"one of: {', '.join(PROPERTIES)} (default: %(default)s)")
    p.add_argument("--limit", type=int, default=8000, help="word occurrences, 80%% train (default: 8000, at least 10)")
    seed = cli_number(int, **SEED_RANGE)
    p.add_argument("--seed", type=seed, default=0, help="seed of the sampling, the split and the control labels")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/probe, or probes/<model>-<time>)")
    p.set_defaults(handler=probe_command)


def probe_command(args) -> int:
    from lmforge.core.rundir import check_output_folder, new_run_path
    from lmforge.explain.probing import (
        check_request,
        format_probe_table,
        load_probe_model,
        probe_layers,
        write_probe_report,
    )
    from lmforge.registry import quiet_libraries

    check_request(args.property, args.limit)  # before loading the model
    if args.out is not None:
        check_output_folder(args.out, "--out")
    quiet_libraries()
    model, tokenizer = load_probe_model(args.model, args.seed)
    result = probe_layers(model, tokenizer, args.property, args.limit, args.seed)
    result.model = args.model
    is_run = (Path(args.model) / "config.yaml").is_file()
    out = args.out or (Path(args.model) / "probe" if is_run else new_run_path(Path(args.model).name, Path("probes")))
    json_path, html_path = write_probe_report(result, out)
    print(format_probe_table(result))
    print(f"written: {json_path} and {html_path} ({result.seconds:.0f} s)")
    return 0


def add_all(commands) -> None:
    """Every explanation command: explain, explain-eval, explain-global, probe."""
    add_explain_parsers(commands)
    add_probe_parser(commands)
