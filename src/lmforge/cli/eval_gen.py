"""`lmforge eval-gen`: sample completions of a causal LM on GSM8K, MBPP or HumanEval, label each
one, and write every sample and the metrics (pass@k, majority vote) to a folder.

The work is `generation/eval_gen.py`'s; this module reads the options, checks them before anything is
loaded (so bad input stops in a second and writes nothing), and writes the outputs:
  samples.jsonl   one line per sample: problem id, sample index, completion, finish reason, tokens,
                  verdict (passed), status, extracted and gold answer (GSM8K), error line and run
                  time (code tasks)
  metrics.json    pass@k per k, majority-vote accuracy (GSM8K, n > 1), counts, timings, the full
                  parameters, model, task, split and a manifest (versions, git commit, hardware)
Both are written to a temporary file and renamed, samples first and metrics last: a folder with a
metrics.json holds a finished evaluation, and an interrupted one leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from lmforge.errors import UserError
from lmforge.models.precision import DTYPE_CHOICES

# Sampling defaults when --n > 1: Chen et al. 2021 (section 2.1, figure 5) sampled with nucleus
# top_p = 0.95, and found temperature 0.8 best for pass@100 (0.2 for pass@1); 0.8 also gives the
# diverse samples that majority voting and self-training need.
SAMPLING_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95

DESCRIPTION = """\
Generate --n completions per problem of a task, label every completion (GSM8K: the answer after
'####' against the gold one; MBPP / HumanEval: the program with its tests, run in lmforge's sandbox),
and report pass@k (the unbiased estimator of Chen et al. 2021) and, for GSM8K with n > 1, the
majority-vote accuracy. Writes samples.jsonl (every sample and its verdict) and metrics.json.

MODEL_OR_RUN_DIR is, with --backend hf (default): gemma-3-270m, tiny-gpt2, a Hugging Face causal-LM
folder or a finished run folder; with --backend openai: the model name sent to the server at
--base-url (any OpenAI-compatible server: vLLM, llama.cpp, Ollama, lmforge serve)."""

EPILOG = """\
defaults:
  --temperature  0 (greedy) when --n is 1, else 0.8; --top-p 0.95 (both from Chen et al. 2021)
  --out          RUN_DIR/eval-gen/<task>-<split>-<time>/ when MODEL_OR_RUN_DIR is a run folder,
                 else runs/eval-gen/<model>-<task>-<split>-<time>/
examples:
  lmforge eval-gen gemma-3-270m --task gsm8k --limit 50 --shots 4
  lmforge eval-gen gemma-3-270m --task mbpp --n 10 --k 1,5,10 --workers 4
  lmforge serve gemma-3-270m --port 8000 &
  lmforge eval-gen gemma-3-270m --backend openai --task humaneval --n 4 --k 1,4"""


def add_eval_gen_parser(commands) -> None:
    from lmforge.config import SEED_RANGE, cli_number
    from lmforge.generation.openai_client import DEFAULT_BASE_URL
    from lmforge.tasks import TASKS

    p = commands.add_parser(
        "eval-gen",
        help="evaluate a causal LM by generation on GSM8K / MBPP / HumanEval: pass@k, majority vote",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_OR_RUN_DIR", help="the model, a run folder, or (openai) a served model name")
    p.add_argument("--task", required=True, help=f"{' | '.join(TASKS)}")
    p.add_argument("--split", help="the task's split (default: its evaluation split: gsm8k dev, mbpp test, ...)")
    positive = cli_number(int, min=1)
    p.add_argument("--limit", type=positive, help="first L problems of the split (default: all)")
    p.add_argument(
        "--shots", type=int, help="few-shot exemplars in each prompt (gsm8k: 0-8, default 8; mbpp: 0-3, default 3)"
    )
    p.add_argument("--n", type=int, default=1, help="samples per problem (default: %(default)s)")
    p.add_argument("--k", default="1", help="pass@k for these k, a comma list, each <= n (default: %(default)s)")
    p.add_argument("--temperature", type=cli_number(min=0.0), help="0 is greedy (default: 0 when n is 1, else 0.8)")
    top_p = cli_number(above=0.0, max=1.0)
    p.add_argument("--top-p", type=top_p, default=DEFAULT_TOP_P, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=positive, help="per sample (default: gsm8k 320, mbpp and humaneval 384)")
    seed = cli_number(int, **SEED_RANGE)
    p.add_argument("--seed", type=seed, default=0, help="seed of every sample's random generator (default: 0)")
    p.add_argument("--backend", default="hf", help="hf (local, default) or openai (an OpenAI-compatible server)")
    p.add_argument("--batch-size", type=positive, default=8, help="hf: sequences generated together (default: 8)")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="hf: the weights' type; auto = bfloat16 where this CPU has bfloat16 units (default: %(default)s)",
    )
    p.add_argument("--base-url", help=f"openai: the server's API root (default: {DEFAULT_BASE_URL})")
    p.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight (default: 8)")
    p.add_argument("--workers", type=int, default=2, help="code tasks: programs run at a time (default: 2)")
    p.add_argument(
        "--timeout", type=cli_number(above=0.0), default=10.0, help="code tasks: seconds per program (default: 10)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: see below)")
    p.set_defaults(handler=cmd_eval_gen)


def cmd_eval_gen(args) -> int:
    from lmforge.core.console import say
    from lmforge.core.rundir import check_output_folder
    from lmforge.generation.eval_gen import (
        DEFAULT_MAX_NEW_TOKENS,
        FALLBACK_MAX_NEW_TOKENS,
        generation_metrics,
        parse_ks,
        sample_and_label,
    )
    from lmforge.generation.generate import make_generator
    from lmforge.generation.openai_client import DEFAULT_BASE_URL
    from lmforge.generation.sampling import BACKENDS, SamplingParams
    from lmforge.models.classifier import check_model_folder
    from lmforge.tasks import load_task
    from lmforge.tasks.base import check_split

    # Everything the user typed is checked before the model loads.
    task = load_task(args.task)
    split = args.split or task.eval_split
    check_split(task.name, split, task.splits)
    if args.backend not in BACKENDS:
        raise UserError(f"--backend {args.backend!r}: expected one of {', '.join(BACKENDS)}")
    if args.base_url and args.backend != "openai":
        raise UserError("--base-url is for --backend openai; the hf backend runs the model here")
    if args.n < 1:
        raise UserError(f"--n {args.n}: expected at least 1 sample per problem")
    ks = parse_ks(args.k, args.n)
    for name, value in (("--workers", args.workers), ("--timeout", args.timeout), ("--concurrency", args.concurrency)):
        if not value > 0:
            raise UserError(f"{name} {value}: expected a positive number")
    shots = _shots_option(task, args.shots)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else SAMPLING_TEMPERATURE)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS.get(task.name, FALLBACK_MAX_NEW_TOKENS)
    params = SamplingParams(
        n=args.n,
        temperature=temperature,
        top_p=args.top_p,
        max_new_tokens=max_new_tokens,
        stop=task.stop,
        seed=args.seed,
    )
    out = args.out or default_out(args.model, args.backend, task.name, split)
    check_output_folder(out, "--out")
    for name in ("metrics.json", "samples.jsonl"):
        if (out / name).exists():
            raise UserError(f"{out}: already holds {name} of an evaluation; choose another --out or remove it")
    if args.n > 1 and temperature == 0:
        say(f"--n {args.n} with temperature 0: greedy samples are all equal, so pass@k equals pass@1")

    problems = task.problems(split, limit=args.limit, **shots)
    if args.backend == "hf":
        check_model_folder(args.model)  # a damaged weights file named, not a safetensors traceback
        generator = make_generator("hf", args.model, batch_size=args.batch_size, dtype=args.dtype)
    else:
        base_url = args.base_url or DEFAULT_BASE_URL
        generator = make_generator("openai", args.model, base_url=base_url, concurrency=args.concurrency)
    sampled = sample_and_label(
        task, problems, generator, params, workers=args.workers, timeout_s=args.timeout, progress=True
    )
    metrics = generation_metrics(task, problems, sampled.samples, ks)

    result = {
        "model": args.model,
        "backend": args.backend,
        "task": task.name,
        "split": split,
        "metrics": metrics,
        "timing": {
            "generation_seconds": round(sampled.generation_seconds, 3),
            "generated_tokens": sampled.generated_tokens,
            "tokens_per_second": round(sampled.generated_tokens / max(sampled.generation_seconds, 1e-9), 2),
            # code tasks: the sandbox's wall-clock time; answer tasks: reading the answers
            "label_seconds": round(sampled.label_seconds, 3),
        },
        "parameters": {
            "n": params.n,
            "k": ks,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "stop": list(params.stop),
            "seed": params.seed,
            "limit": args.limit,
            **shots,
            "batch_size": args.batch_size if args.backend == "hf" else None,
            "dtype": generator.dtype if args.backend == "hf" else None,
            "base_url": (args.base_url or DEFAULT_BASE_URL) if args.backend == "openai" else None,
            "concurrency": args.concurrency if args.backend == "openai" else None,
            "workers": args.workers if task.program_for is not None else None,
            "timeout_s": args.timeout if task.program_for is not None else None,
        },
        "manifest": _manifest(params.seed, task.name, split, problems),
    }
    metrics_path = write_outputs(out, sampled.samples, result)
    print(summary_table(result))
    print(f"written: {out / 'samples.jsonl'} and {metrics_path}")
    return 0


def _shots_option(task, shots: int | None) -> dict:
    """{"shots": shots} when given and the task takes it (GSM8K, MBPP); nothing when not given."""
    import inspect

    if shots is None:
        return {}
    if "shots" not in inspect.signature(task.problems).parameters:
        raise UserError(f"--shots: task {task.name} has a fixed prompt format; --shots applies to gsm8k and mbpp")
    return {"shots": shots}


def is_run_folder(model: str) -> bool:
    """A finished lmforge run: a folder with a config.yaml or a final/ folder."""
    path = Path(model).expanduser()
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "final").is_dir())


def default_out(model: str, backend: str, task: str, split: str) -> Path:
    """RUN_DIR/eval-gen/<task>-<split>-<time>/ for a run, else runs/eval-gen/<model>-<task>-<split>-<time>/."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if backend == "hf" and is_run_folder(model):
        return Path(model).expanduser() / "eval-gen" / f"{task}-{split}-{stamp}"
    path = Path(model).expanduser()
    if backend == "hf" and path.is_dir():  # a model folder: its name (the parent's for a run's final/)
        name = path.resolve().name if path.resolve().name != "final" else path.resolve().parent.name
    else:  # a builtin name, a hub id or a served model name such as org/model
        name = model.strip("/").replace("/", "-")
    return Path("runs") / "eval-gen" / f"{name}-{task}-{split}-{stamp}"


def _manifest(seed: int, task: str, split: str, problems) -> dict:
    from lmforge.core.rundir import build_manifest

    digest = hashlib.sha256()
    for problem in problems:
        digest.update(problem.id.encode() + b"\0" + problem.prompt.encode() + b"\0")
    data = {"task": task, "split": split, "problems": len(problems), "prompts_sha256": digest.hexdigest()[:16]}
    return build_manifest(seed, data)


def write_outputs(out: Path, samples, result: dict) -> Path:
    """samples.jsonl, then metrics.json, each written whole and renamed into place."""
    from lmforge.core.rundir import write_text_atomic
    from lmforge.generation.eval_gen import write_samples

    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "samples.jsonl", samples)
    metrics_path = out / "metrics.json"
    write_text_atomic(metrics_path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return metrics_path


def summary_table(result: dict) -> str:
    """A few lines for the terminal: the metrics, counts and timings."""
    m, t, p = result["metrics"], result["timing"], result["parameters"]
    decoding = "greedy" if p["temperature"] == 0 else f"temperature {p['temperature']:g}, top-p {p['top_p']:g}"
    per = m["samples_per_problem"]
    lines = [
        f"{result['model']} on {result['task']} {result['split']}: {m['problems']} problems x {per} "
        f"sample{'s' if per != 1 else ''} ({decoding})",
    ]
    rows = [(f"pass@{k}", f"{value:.4f}") for k, value in m["pass@k"].items()]
    if "majority_vote_accuracy" in m:
        rows.append(("majority vote", f"{m['majority_vote_accuracy']:.4f}"))
    rows.append(("correct samples", f"{m['correct_samples']} of {m['samples']}"))
    rows.append(("solved problems", f"{m['solved_problems']} of {m['problems']}"))
    rows.append(("statuses", ", ".join(f"{name} {count}" for name, count in m["statuses"].items())))
    rows.append(("finish reasons", ", ".join(f"{name} {count}" for name, count in m["finish_reasons"].items())))
    rows.append(
        (
            "generation",
            f"{t['generation_seconds']:.1f} s, {t['generated_tokens']:,} tokens, {t['tokens_per_second']:.1f} tokens/s",
        )
    )
    rows.append(("sandbox" if p["workers"] is not None else "scoring", f"{t['label_seconds']:.1f} s"))
    lines += [f"  {name:<16} {value}" for name, value in rows]
    return "\n".join(lines)
