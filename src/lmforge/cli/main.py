"""The `lmforge` command line: list, run, eval, predict, export, report, recipe cp (cli/recipes.py, which
also finds recipes by name), the explanation commands
(explain, explain-eval, explain-global, probe: see cli/explain.py), serve (generation/serve.py) and
eval-gen (cli/eval_gen.py).

Exit codes: 0 success, 2 bad input or usage (one line on stderr saying what and where),
130 interrupted by SIGINT / SIGTERM after a checkpoint was saved, 1 anything unexpected.
Heavy imports (torch, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import lmforge
from lmforge.cli.eval_gen import add_eval_gen_parser
from lmforge.cli.explain import add_all as add_explanation_commands
from lmforge.cli.recipes import add_recipe_parser, find_recipe, first_comment, is_local, list_recipes
from lmforge.cli.serve import add_serve_parser
from lmforge.config import SECTIONS, cli_number, describe
from lmforge.errors import Interrupted, UserError, cut, disk_full
from lmforge.registry import (
    METHODS,
    load_finished_run,
    load_run_config,
    quiet_libraries,
    resolve,
    write_run_report,
)

RUN_EPILOG = """\
Any config key can be set as key=value after the recipe, for example:
  lmforge run lora/minilm_sst2 train.epochs=1 train.lr=1e-3 lora.r=16
Keys shared by every method: method, model.name, model.max_length, data.train, data.eval,
data.text_column, data.label_column, train.epochs, train.max_steps, train.batch_size,
train.grad_accum, train.lr, train.seed, train.eval_every, train.save_every, ...
(`lmforge list methods` shows every key with its default and meaning).

data.train and data.eval name a split as SOURCE:SPLIT, the split after the last colon:
  sst2:train (builtin), hub:nyu-mll/glue:validation (a hub dataset; its subset in data.subset, e.g.
  data.subset=mrpc; read from the datasets cache when HF_HUB_OFFLINE=1), FOLDER:test (a
  Dataset.save_to_disk folder); a .jsonl/.csv/.tsv/.parquet/.arrow file is one split. A split left out
  is train for data.train, dev (builtins) or validation (folders, hub) for data.eval. Text pairs (NLI,
  paraphrase): data.text_pair_column=COLUMN. See docs/data.md.
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except UserError as e:
        _close_progress_bars()
        print(f"lmforge: error: {cut(str(e).replace(chr(10), ' '), 2000)}", file=sys.stderr)  # one bounded line
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"lmforge: interrupted by {e}; continue with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, details on request
        _close_progress_bars()
        if disk_full(e):  # not a fault of lmforge's: say so in one line
            where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
            print(f"lmforge: error: the disk is full{where}: free some space and run it again", file=sys.stderr)
            return 2
        if os.environ.get("LMFORGE_DEBUG"):
            traceback.print_exc()
        else:
            print(
                f"lmforge: unexpected error: {type(e).__name__}: {e} (set LMFORGE_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
        return 1


def _close_progress_bars() -> None:
    """End a progress bar left open by the error, so that the error starts its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


class Parser(argparse.ArgumentParser):
    """A usage error (a bad flag value, a missing argument) is one line like every other bad input, with a
    pointer to --help instead of the usage text. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        raise UserError(f"{cut(message, 400)} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lmforge",
        description="Adapt pre-trained language models with "
        "published methods: recipes, evaluation, prediction and run reports.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {lmforge.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("list", help="list methods, recipes, models or datasets")
    p.add_argument("what", nargs="?", default="all", choices=["all", "methods", "recipes", "models", "datasets"])
    p.set_defaults(handler=cmd_list)

    p = commands.add_parser(
        "run", help="train with a recipe", epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe", help="a recipe YAML path or name such as lora/minilm_sst2 (see `lmforge list recipes`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")
    p.add_argument("--run-dir", type=Path, help="run folder (default: runs/<recipe>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir (default: the newest run of this recipe) from its last checkpoint",
    )
    p.set_defaults(handler=cmd_run)

    p = commands.add_parser("eval", help="evaluate a finished run on other labelled data")
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--data", required=True, help="as data.eval: builtin split (sst2:dev), a file, FOLDER:SPLIT or hub:ID:SPLIT"
    )
    p.add_argument("--text-column", default="text", help="text column in a user file (default: text)")
    p.add_argument("--label-column", default="label", help="label column in a user file (default: label)")
    p.add_argument("--text-pair-column", help="second text of a pair (default: the run's data.text_pair_column)")
    p.add_argument("--subset", help="subset of a hub dataset (default: the run's data.subset)")
    p.add_argument("--batch-size", type=cli_number(int, min=1), default=64)
    p.set_defaults(handler=cmd_eval)

    p = commands.add_parser("predict", help="label texts with a finished run, with probabilities")
    p.add_argument("run_dir", type=Path)
    p.add_argument("texts", nargs="*", help="texts to label")
    p.add_argument("--file", type=Path, help="a text file (one text per line) or a .jsonl/.csv/.tsv file")
    p.add_argument("--text-column", default="text", help="text column when --file is jsonl/csv/tsv")
    p.add_argument("--top", type=cli_number(int, min=1), default=3, help="labels shown per text (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.set_defaults(handler=cmd_predict)

    p = commands.add_parser("export", help="save a finished run as a plain Hugging Face model folder")
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "out_dir", type=Path, nargs="?", help="where to save it (a run whose final/ is a LoRA adapter needs --merge)"
    )
    p.add_argument(
        "--merge",
        type=Path,
        metavar="OUT_DIR",
        help="merge the adapter (LoRA, AdaLoRA) into the base weights and save_pretrained the model here",
    )
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser("report", help="rebuild RUN_DIR/report.html")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(handler=cmd_report)

    add_recipe_parser(commands)
    add_explanation_commands(commands)
    add_serve_parser(commands)
    add_eval_gen_parser(commands)
    return parser


# ---- list ---------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    from lmforge.data.builtin import BUILTIN_DATASETS, DATA_DIR
    from lmforge.models.classifier import BUILTIN_MODELS

    what = args.what
    if what in ("all", "methods"):
        print("methods:")
        for m in METHODS.values():
            print(f"  {m.name:<10} {m.summary} [{m.paper}]")
            for key, default, help_text in describe(m.options, m.name):
                print(f"      {key:<24} {default:<20} {help_text}")
        if what == "methods":
            print("shared keys:")
            for section, cls in SECTIONS.items():
                for key, default, help_text in describe(cls, section):
                    print(f"      {key:<24} {default:<20} {help_text}")
    if what in ("all", "recipes"):
        print("recipes:")
        for name, path in list_recipes().items():
            mine = f"  (your copy: {path})" if is_local(path) else ""
            print(f"  {name:<22} {first_comment(path)}{mine}")
    if what in ("all", "models"):
        print("models:")
        for m in BUILTIN_MODELS.values():
            print(f"  {m.name:<12} {m.parameters:>6}  {m.description}")
        print("  (or any local Hugging Face folder, or a hub id when online)")
    if what in ("all", "datasets"):
        print("datasets:")
        for d in BUILTIN_DATASETS.values():
            size = sum((DATA_DIR / f).stat().st_size for f in d.files)
            counts = ", ".join(f"{s} {len(d.splits[s]()[0]):,}" for s in d.splits)
            labels = len(d.labels) if d.labels else len(set(d.splits["train"]()[1]))
            print(f"  {d.name:<8} {counts:<24} {labels:>2} labels  {size / 1e6:.1f} MB  {d.description}")
            print(f"  {'':<8} license: {d.license}")
            print(f"  {'':<8} splits: {d.how_split}")
    return 0


# ---- run ----------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    recipe = find_recipe(args.recipe)
    label = f"{recipe.parent.name}-{recipe.stem}"
    cfg = load_run_config(recipe, args.overrides)
    run_dir = args.run_dir
    if args.resume:
        run_dir = run_dir or _newest_run(label)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir}: no config.yaml here, so nothing to resume")
        if args.overrides:
            raise UserError("--resume continues a run with its saved config; drop the key=value overrides")
        named = cfg
        cfg = load_run_config(run_dir / "config.yaml", [])
        _check_same_recipe(run_dir, cfg, named, f"{recipe.parent.name}/{recipe.stem}")
    cfg.recipe = f"{recipe.parent.name}/{recipe.stem}"
    run_dir = run_dir or _new_run_dir(label)
    quiet_libraries()
    result = resolve(METHODS[cfg.method].recipe)(cfg, run_dir, args.resume)
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch`, one process speaks
        return 0
    print(result.line())
    print(f"report: {run_dir / 'report.html'}")
    return 0


def _check_same_recipe(run_dir: Path, saved, named, recipe: str) -> None:
    """--resume continues the run in `run_dir` with its saved config: refuse a command that names another
    recipe than the one the run was made with (manifest.json records it; for a run made before it did,
    the method must match)."""
    try:
        made_with = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError, AttributeError):
        made_with = None
    if isinstance(made_with, str) and made_with != recipe:
        raise UserError(
            f"{run_dir}: made with recipe {made_with}, not {recipe}; continue it with "
            f"lmforge run {made_with} --resume --run-dir {run_dir}"
        )
    if saved.method != named.method:
        raise UserError(f"{run_dir}: a {saved.method} run, but recipe {recipe} is a {named.method} recipe")


def _new_run_dir(label: str) -> Path:
    from lmforge.core.rundir import new_run_path

    return new_run_path(label)


def _newest_run(label: str) -> Path:
    runs = sorted(Path("runs").glob(f"{label}-*"))
    if not runs:
        raise UserError(f"no run of {label} under runs/ to resume; pass --run-dir")
    return runs[-1]


# ---- eval / predict / report ----------------------------------------------------------------------


def cmd_eval(args) -> int:
    from lmforge.core.rundir import RunDir
    from lmforge.data.classify import encode_examples, evaluate
    from lmforge.data.files import check_labels, describe, load_examples

    cfg, labels, model, tokenizer = load_finished_run(args.run_dir, classifier_command="eval")
    pair_column = cfg.data.text_pair_column if args.text_pair_column is None else args.text_pair_column
    subset = cfg.data.subset if args.subset is None else args.subset
    examples = load_examples(args.data, args.text_column, args.label_column, "dev", pair_column, subset)
    check_labels(examples, labels)
    print(describe(examples), file=sys.stderr)
    index = {label: i for i, label in enumerate(labels)}
    ids, type_ids = encode_examples(tokenizer, examples, cfg.model.max_length)
    result = evaluate(
        model,
        ids,
        [index[x] for x in examples.labels],
        len(labels),
        tokenizer.pad_token_id,
        args.batch_size,
        model.device,
        type_ids=type_ids,
    )
    name = Path(args.data).stem if Path(args.data).suffix else args.data.replace(":", "-").replace("/", "-")
    run = RunDir(args.run_dir)
    out = run.write_json(
        f"eval/{name}.json",
        {
            "metrics": {k: v for k, v in result.items() if k != "confusion"},
            "labels": labels,
            "confusion": result["confusion"],
            "eval_data": examples.source,
            "n_examples": len(examples),
        },
    )
    write_run_report(run.path)
    print(
        f"{examples.source}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
        f"loss {result['loss']:.4f} ({len(examples):,} examples)"
    )
    print(f"written: {out}")
    return 0


def cmd_predict(args) -> int:
    import torch

    from lmforge.data.classify import encode, predict_logits, refuse_pair_run
    from lmforge.data.files import read_texts

    texts = list(args.texts) + (read_texts(args.file, args.text_column) if args.file else [])
    if not texts:
        raise UserError("nothing to predict: give texts as arguments or --file")
    cfg, labels, model, tokenizer = load_finished_run(args.run_dir, classifier_command="predict")
    refuse_pair_run(cfg.data, args.run_dir, "predict")
    logits = predict_logits(
        model, encode(tokenizer, texts, cfg.model.max_length), tokenizer.pad_token_id, 64, model.device
    )
    probs = torch.softmax(torch.from_numpy(logits), dim=-1)
    for text, row in zip(texts, probs, strict=False):
        ranked = sorted(zip(labels, row.tolist(), strict=False), key=lambda x: -x[1])[: max(1, args.top)]
        if args.json:
            print(json.dumps({"text": text, "label": ranked[0][0], "probabilities": dict(ranked)}))
        else:
            shown = "  ".join(f"{label} {p:.3f}" for label, p in ranked)
            print(f"{ranked[0][0]}\t{shown}\t{text}")
    return 0


def cmd_export(args) -> int:
    from lmforge.adapters.lora import remove_lora
    from lmforge.core.rundir import check_output_folder

    if (args.out_dir is None) == (args.merge is None):
        raise UserError("lmforge export: give the output folder once: OUT_DIR, or --merge OUT_DIR for an adapter run")
    out, flag = (args.merge, "--merge") if args.merge else (args.out_dir, "OUT_DIR")
    check_output_folder(out, flag)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty")
    if args.merge is None and (args.run_dir / "final" / "adapter_config.json").is_file():
        raise UserError(f"{args.run_dir}: its final/ is a LoRA adapter; add --merge to fold it into the base weights "
                        f"(lmforge export {args.run_dir} --merge {out}), or load final/ with peft")  # fmt: skip
    _, _, model, tokenizer = load_finished_run(args.run_dir)
    model = remove_lora(model.cpu())  # nothing to merge in a fully fine-tuned model
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"{'merged model' if args.merge else 'model'}: {out}")
    return 0


def cmd_report(args) -> int:
    if not (args.run_dir / "config.yaml").is_file():
        raise UserError(f"{args.run_dir}: not a run folder (no config.yaml)")
    print(write_run_report(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
