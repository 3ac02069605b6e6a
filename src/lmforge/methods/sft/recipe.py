"""Supervised fine-tuning of a causal LM on (prompt, completion) pairs: setup -> train -> evaluate -> save.

The loss of a step is the mean cross-entropy of its completion tokens (EOS included) given
everything before them: summed over the step's supervised tokens, divided by their count over the
whole step (all micro-batches and processes), so gradient accumulation is exact and a long
completion weighs in proportion to its tokens (as one long sequence would). Evaluation is the same
loss on held-out pairs (`data.py` says which), and its perplexity exp(loss): a signal for how
training goes, not a task score (`lmforge eval-gen` measures accuracy / pass@k by generating).

Full fine-tuning (`sft.lora=false`) trains every weight and saves a Hugging Face folder in
`final/`; LoRA (`sft.lora=true`, `adapters/lora.py`) trains adapters on frozen weights and saves a
PEFT adapter folder. `load_causal_lm(run_dir)` loads either (LoRA: the base model with the adapter
merged), so `lmforge serve RUN_DIR` and `lmforge eval-gen RUN_DIR` take a finished run.

Chat records (`sft.messages_column`, `data/chat.py`) train on their assistant turns; the loss is the
same mean over the step's supervised tokens. Packing (`sft.packing`, `data/packing.py`) puts several
examples in each row of `model.max_length` tokens, each attending to itself only (checked on the model
before training, `check_isolation`); the loop then batches rows, and the loss, a mean over the step's
supervised tokens, is the one the same examples would give unpacked. Evaluation is never packed.
"""

from __future__ import annotations

import math
import shutil
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.adapters.lora import inject_lora, save_adapter
from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, count_parameters, seed_everything
from lmforge.core.training_run import RunResult, start_training
from lmforge.data.files import manifest_entry
from lmforge.data.packing import collate_packed, pack_rows
from lmforge.data.pairs import Encoded, collate_examples, encode_pairs, load_train_dev
from lmforge.errors import UserError
from lmforge.methods.sft.report import DATA_FILE, data_summary, report_sections
from lmforge.models.causal_lm import GEMMA, load_causal_lm, set_dropout
from lmforge.models.gguf import CONVERSION_NOTE, MODIFICATIONS_FILE, gemma_path
from lmforge.models.lm_logits import last_hidden_states, logits_at

NOTICES = ("GEMMA_TERMS.html", "NOTICE.md", "LICENSE-NOTICE.txt")  # license files of the base model, passed on


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    sft, train = cfg.options, cfg.train
    check_options(cfg)
    template = read_chat_template(sft.chat_template)
    train_pairs, dev_pairs = load_train_dev(cfg.data, sft)

    seed_everything(train.seed)
    model, tokenizer = load_causal_lm(cfg.model.name, seed=train.seed)
    if template:  # rendered with it here, and saved with the tokenizer in final/ for serving
        tokenizer.chat_template = template
    if cfg.model.dropout is not None:
        set_dropout(model, cfg.model.dropout)
    if sft.lora:
        names = inject_lora(
            model, sft.target_modules, sft.lora_r, sft.lora_alpha, sft.lora_dropout, sft.trainable_modules
        )
        say(f"LoRA r={sft.lora_r} alpha={sft.lora_alpha:g} on {len(names)} layers ({', '.join(sft.target_modules)})")
    trainable, total = count_parameters(model)
    say(f"{cfg.model.name}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    train_pairs, train_data = encode_pairs(tokenizer, train_pairs, cfg.model.max_length)
    dev_pairs, dev_data = encode_pairs(tokenizer, dev_pairs, cfg.model.max_length)
    say(f"training on {train_pairs.describe()}")
    say(f"held out: {dev_pairs.describe()}")

    manifest = {"train": manifest_entry(train_pairs.examples()), "eval": manifest_entry(dev_pairs.examples())}
    rows = [[i] for i in range(len(train_data))]  # what the loop batches: one example per row, or packed rows
    if sft.packing:
        check_isolation(model, cfg.model.name)
        rows = pack_rows([len(x) for x in train_data.ids], cfg.model.max_length)
        say(f"packing: {len(train_data):,} examples in {len(rows):,} rows of at most {cfg.model.max_length} tokens")
    lengths = [sum(len(train_data.ids[i]) for i in row) for row in rows]
    t = start_training(cfg, run_dir, resume, model, tokenizer, lengths, manifest)
    pad_id = tokenizer.pad_token_id
    if t.main:
        summary = data_summary(tokenizer, train_pairs, train_data, dev_pairs, dev_data)
        if sft.packing:
            summary["packing"] = {"rows": len(rows), "tokens": sum(lengths), "max_length": cfg.model.max_length}
        t.run.write_json(DATA_FILE, summary)

    def evaluate() -> dict:
        return held_out_loss(t.model, dev_data, pad_id, train.eval_batch_size, t.accelerator.device)

    def micro_loss(micro: list[int], step_tokens: int) -> dict[str, torch.Tensor]:
        """One micro-batch's summed completion-token loss, divided by the whole step's token count."""
        if sft.packing:
            inputs = collate_packed(train_data, [rows[r] for r in micro], pad_id, t.accelerator.device)
        else:
            inputs = collate_examples(train_data, micro, pad_id, t.accelerator.device)
        labels = inputs.pop("labels")
        return {"loss": completion_loss(t.model, inputs, labels)[0] / step_tokens}

    t.evaluator = evaluate
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            # the supervised tokens of every micro-batch and process (of every example of every row)
            step_tokens = sum(train_data.targets(i) for r in batch.examples for i in rows[r])
            loss = t.accumulate(batch, partial(micro_loss, step_tokens=step_tokens))
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)

    def save(model, tokenizer, folder: Path) -> None:
        if sft.lora:
            save_adapter(
                model,
                folder,
                sft.lora_r,
                sft.lora_alpha,
                sft.lora_dropout,
                sft.target_modules,
                sft.trainable_modules,
                base_model=cfg.model.name,
                task_type="CAUSAL_LM",
            )
        else:
            model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        copy_notices(cfg.model.name, folder, f"{'LoRA adapter' if sft.lora else 'all weights'}, data {cfg.data.train}")

    def summary(final: dict) -> dict:
        return {
            "labels": [],
            "eval_data": dev_pairs.source,
            "n_examples": len(dev_pairs),
            "eval_tokens": sum(dev_data.targets(i) for i in range(len(dev_data))),
            "train_data": train_pairs.source,
            "train_pairs": len(train_pairs),
            "lora": sft.lora,
        }

    final = t.finish(save, summary, report_sections)
    metrics = {"loss": final["loss"], "perplexity": final["perplexity"]}
    return RunResult(run_dir, metrics, ("perplexity", final["perplexity"]))


def check_options(cfg: RunConfig) -> None:
    """Refuse the shared keys that have no meaning here, before anything is loaded."""
    train, data = cfg.train, cfg.data
    if train.early_stopping_patience:
        raise UserError("train.early_stopping_patience: not available for sft (no accuracy to follow)")
    if data.text_column != "text" or data.label_column != "label":
        raise UserError("data.text_column / data.label_column: sft reads sft.prompt_column and sft.completion_column")
    if data.text_pair_column or data.subset:
        raise UserError("data.text_pair_column / data.subset: not available for sft (it reads .jsonl/.csv/.tsv pairs)")
    sft = cfg.options
    if sft.chat_template and not sft.messages_column:
        raise UserError("sft.chat_template: renders chat records; set sft.messages_column too")


def read_chat_template(path: str) -> str:
    """The text of a Jinja chat template file (empty when none is named)."""
    if not path:
        return ""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"sft.chat_template: {file}: file not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"sft.chat_template: {file}: not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"sft.chat_template: {file}: the file is empty")
    return text


@torch.no_grad()
def check_isolation(model, model_name: str) -> None:
    """Refuse packing for a model whose attention lets packed examples see each other: in a row of two
    examples, the second one's hidden states must not change when the first one's tokens do
    (`data/packing.py` says how transformers isolates them)."""
    first, other_first, last = [11, 12, 13, 14, 15], [21, 22, 23, 24, 25], [31, 32, 33]  # any ids of a vocabulary
    positions = list(range(len(first))) + list(range(len(last)))
    device = next(model.parameters()).device
    inputs = {
        "input_ids": torch.tensor([first + last, other_first + last], device=device),
        "position_ids": torch.tensor([positions, positions], device=device),
        "use_cache": False,
    }
    was_training = model.training
    model.eval()
    try:
        hidden = last_hidden_states(model, inputs)[:, len(first) :].float()  # (2, len(last), H)
    except (TypeError, ValueError) as e:  # a model that takes no position_ids
        raise UserError(f"sft.packing: {model_name} cannot run packed rows ({e}); set sft.packing=false") from None
    finally:
        model.train(was_training)
    moved = (hidden[0] - hidden[1]).abs().max().item()
    if moved > 1e-3 * (1 + hidden.abs().max().item()):
        raise UserError(
            f"sft.packing: {model_name}'s attention lets packed examples see each other (its transformers class "
            "does not read restarting position_ids as example boundaries); set sft.packing=false"
        )


def completion_loss(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy, token count) of the supervised tokens: position t's logits predict
    labels[t + 1]; labels of -100 (prompt, padding) are left out. Logits are computed (`logits_at`)
    and cast to float32 at the supervised positions only, which matters with a 262k-token vocabulary."""
    target = labels[:, 1:]  # (B, T-1)
    positions = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): the positions that predict a label
    positions[:, :-1] = target != -100
    picked = logits_at(model, inputs, positions).float()  # (N, V)
    return F.cross_entropy(picked, target[positions[:, :-1]], reduction="sum"), int(positions.sum())


@torch.no_grad()
def held_out_loss(model, data: Encoded, pad_id: int, batch_size: int, device) -> dict:
    """Mean completion-token loss over the held-out pairs (every token weighs the same) and its perplexity."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = collate_examples(data, chunk, pad_id, device)
        labels = inputs.pop("labels")
        summed, n = completion_loss(model, inputs, labels)
        total, count = total + summed.item(), count + n
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss)}


def copy_notices(model_name: str, folder: Path, how: str) -> None:
    """A model derived from Gemma carries the Gemma Terms of Use and its notice (docs/causal_lm.md):
    the license files of the base model's folder (or of the run it continues) go into `folder`, and
    its list of modified files gains the weights written here, fine-tuned `how`."""
    if model_name == GEMMA:
        bases = [gemma_path()]
    else:
        path = Path(model_name).expanduser()
        bases = [path, path / "final"] if path.is_dir() else []
    for base in bases:
        for name in NOTICES:
            if (base / name).is_file():
                shutil.copy(base / name, folder / name)
    if not (folder / "LICENSE-NOTICE.txt").is_file():
        return  # not a Gemma derivative
    modified = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    note = next((base / MODIFICATIONS_FILE for base in bases if (base / MODIFICATIONS_FILE).is_file()), None)
    history = note.read_text(encoding="utf-8") if note else CONVERSION_NOTE
    line = f"- {modified}: fine-tuned by lmforge's sft method ({how}) on {time.strftime('%Y-%m-%d')}.\n"
    (folder / MODIFICATIONS_FILE).write_text(history + line, encoding="utf-8")


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_causal_lm(str(run_dir), seed=cfg.train.seed)
