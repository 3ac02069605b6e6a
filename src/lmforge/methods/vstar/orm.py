"""The outcome-reward-model (ORM) verifier, V-STaR's baseline (Cobbe et al. 2021, "Training Verifiers to
Solve Math Word Problems", section 4): G_SFT with LoRA and a scalar head on the hidden state of a
solution's last token (its EOS), trained to predict whether the solution is correct, on every labelled
solution of D_VER. A candidate's score is that predicted probability.

The objective (`vstar.orm.loss`), per optimizer step over its solutions S and their completion tokens:

    classification_and_lm (default):  L = mean_{s in S} BCE(head(h_s), z_s) + mean_{tokens of S} -log p(token | prefix)
    classification:                   L = mean_{s in S} BCE(head(h_s), z_s)

Cobbe et al. train their verifier "with the same language modeling objective as the generator" beside the
correctness prediction and found it "a strict improvement" (their section 4.2 and appendix); V-STaR's ORM
baseline follows them. Here the language-modelling term is SFT's loss (`methods/sft`: the mean
cross-entropy of the completion tokens and EOS, prompts left out) on the same solutions, correct and
incorrect, with weight 1; one body pass gives both terms. The classification-only variant is the
objective alone, kept to measure what the auxiliary loss does.

Same data, starting point, LoRA, seeding, dropout and loop as the DPO verifier (`verifier.py`), so the
two differ only in the objective: the paper's finding to test is that the DPO verifier keeps gaining as k grows while
the ORM stalls. Held-out solutions (those of a few problems, carved by problem) give the evaluation:
each term of the loss and the accuracy at threshold 0.5.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, seed_everything
from lmforge.core.stages import FINISHED, child_run
from lmforge.core.training_run import start_training
from lmforge.data.files import Examples, manifest_entry
from lmforge.data.pairs import Encoded, collate
from lmforge.errors import UserError
from lmforge.methods.vstar.stages import carve_by_problem, device, encode_solutions, verifier_run_config
from lmforge.models.lm_logits import last_hidden_states, output_layer

HEAD = "score_head"


class OutcomeRewardModel(nn.Module):
    """A causal LM's body and a linear head: the logit of "this solution is correct"."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.score_head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(self.score_head.weight)  # every solution starts at probability 0.5
        nn.init.zeros_(self.score_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_positions: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B,) logits of "correct"; with a boolean `lm_positions` (B, T), also the LM's next-token logits
        (N, V) at its N True positions, in row-major order, from the same body pass."""
        hidden = last_hidden_states(self.lm, {"input_ids": input_ids, "attention_mask": attention_mask})  # (B, T, H)
        last = attention_mask.sum(dim=1) - 1  # (B,): right padding, so the EOS is the last real token
        scores = self.score_head(hidden[torch.arange(len(last)), last]).squeeze(-1)  # (B,) logits
        if lm_positions is None:
            return scores
        return scores, output_layer(self.lm, hidden[lm_positions])  # (B,), (N, V)


def orm_loss(
    model: nn.Module, inputs: dict[str, torch.Tensor], passed: torch.Tensor, step_solutions: int, step_tokens: int,
    with_lm: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """One micro-batch's terms of the ORM objective (module docstring), each summed over the micro-batch and
    divided by the whole step's count (its solutions, its completion tokens), so that summed over the step's
    micro-batches they are the step's means; and the (B,) score logits, detached. `inputs` is a `collate`
    batch with its labels (-100 on prompt and padding); `passed` (B,) the solutions' correctness as 0.0 / 1.0."""
    labels = inputs["labels"]
    target = labels[:, 1:]  # (B, T-1): the token each position predicts
    positions = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): positions that predict a completion token
    positions[:, :-1] = target != -100
    if not with_lm:
        scores = model(inputs["input_ids"], inputs["attention_mask"])  # (B,)
    else:
        scores, token_logits = model(inputs["input_ids"], inputs["attention_mask"], positions)  # (B,), (N, V)
    parts = {"classification": F.binary_cross_entropy_with_logits(scores, passed, reduction="sum") / step_solutions}
    if with_lm:
        lm = F.cross_entropy(token_logits.float(), target[positions[:, :-1]], reduction="sum")  # ()
        parts["lm"] = lm / step_tokens
    return parts, scores.detach()


def train_orm(
    cfg: RunConfig, stages: Path, gsft_dir: Path, prompts: dict[str, str], solutions: Sequence, answer_end: str
) -> Path:
    """The ORM in stages/orm/, from the finished G_SFT run `gsft_dir`, on D_VER's labelled solutions."""
    from lmforge.adapters.lora import inject_lora, save_adapter
    from lmforge.models.causal_lm import load_causal_lm, set_dropout

    child = child_run(stages, "orm")
    if child.state == FINISHED:
        say(f"orm: finished earlier ({child.folder})")
        return child.folder
    v, opts = cfg.options, cfg.options.orm
    if len({s.passed for s in solutions}) < 2:
        raise UserError("orm: D_VER holds only correct or only incorrect solutions; a classifier needs both")
    train, dev = carve_by_problem(solutions)
    lm, tokenizer = load_causal_lm(str(gsft_dir))
    if cfg.model.dropout is not None:  # as the generators' SFT (the sft method) applies it
        set_dropout(lm, cfg.model.dropout)
    model = OutcomeRewardModel(lm)
    seed_everything(cfg.train.seed)  # the adapters' initialisation does not depend on earlier stages (verifier.py)
    inject_lora(model, v.target_modules, v.lora_r, v.lora_alpha, v.lora_dropout, [HEAD])
    train_data = encode_solutions(tokenizer, prompts, train, answer_end)
    dev_data = encode_solutions(tokenizer, prompts, dev, answer_end)
    train_labels = torch.tensor([float(s.passed) for s in train])
    dev_labels = torch.tensor([float(s.passed) for s in dev])
    say(f"orm: {len(train):,} solutions ({int(train_labels.sum()):,} correct), {len(dev):,} held out")
    orm_cfg = verifier_run_config(cfg, gsft_dir, opts, f"D_VER solutions ({len(train):,})")
    manifest = {  # prompt and correctness of each solution
        split: manifest_entry(
            Examples([prompts[s.problem_id] for s in ss], [str(s.passed) for s in ss], f"D_VER ({split})")
        )
        for split, ss in (("train", train), ("eval", dev))
    }
    lengths = [len(x) for x in train_data.ids]
    t = start_training(orm_cfg, child.folder, child.resume, model, tokenizer, lengths, manifest)
    pad_id, with_lm = tokenizer.pad_token_id, opts.loss == "classification_and_lm"

    def batch_of(data: Encoded, rows: Sequence[int], on) -> dict[str, torch.Tensor]:
        return collate([data.ids[r] for r in rows], [data.prompt_lengths[r] for r in rows], pad_id, on)

    def micro_loss(micro: list[int], step_solutions: int, step_tokens: int) -> dict[str, torch.Tensor]:
        inputs = batch_of(train_data, micro, t.accelerator.device)
        passed = train_labels[micro].to(inputs["input_ids"].device)
        return orm_loss(t.model, inputs, passed, step_solutions, step_tokens, with_lm)[0]

    @torch.no_grad()
    def evaluate() -> dict:
        """Each term of the objective as a mean over the held-out solutions (tokens), and the accuracy."""
        if not dev:
            return {}
        was_training = t.model.training
        t.model.eval()
        size, tokens = cfg.train.eval_batch_size, sum(dev_data.targets(i) for i in range(len(dev)))
        sums, logits = {}, []
        for start in range(0, len(dev), size):
            rows = list(range(start, min(start + size, len(dev))))
            inputs = batch_of(dev_data, rows, t.accelerator.device)
            passed = dev_labels[rows].to(inputs["input_ids"].device)
            parts, scores = orm_loss(t.model, inputs, passed, len(dev), tokens, with_lm)
            sums = {name: sums.get(name, 0.0) + value.item() for name, value in parts.items()}
            logits.append(scores.cpu())
        t.model.train(was_training)
        accuracy = ((torch.cat(logits) > 0).float() == dev_labels).float().mean().item()
        return {"loss": sum(sums.values()), **{f"{name}_loss": x for name, x in sums.items()}, "accuracy": accuracy}

    t.evaluator = evaluate
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            step_tokens = sum(train_data.targets(i) for i in batch.examples)  # every micro-batch and process
            micro = partial(micro_loss, step_solutions=len(batch.examples), step_tokens=step_tokens)
            loss = t.accumulate(batch, micro)
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)

    def save(model, tokenizer, out: Path) -> None:
        save_adapter(model, out, v.lora_r, v.lora_alpha, v.lora_dropout, v.target_modules, [HEAD],
                     base_model=str(gsft_dir), task_type="SEQ_CLS")  # fmt: skip
        tokenizer.save_pretrained(out)

    t.finish(save, lambda final: {"labels": ["False", "True"], "solutions": len(train), "held_out": len(dev),
                                  "objective": opts.loss})  # fmt: skip
    return child.folder


@torch.no_grad()
def orm_scores(orm_dir: Path, gsft_dir: Path, prompts: dict[str, str], samples: Sequence, answer_end: str,
               batch_size: int) -> list[float]:  # fmt: skip
    """P(correct) of every candidate, in the order of `samples`."""
    from lmforge.adapters.lora import load_adapter
    from lmforge.models.causal_lm import load_causal_lm

    lm, tokenizer = load_causal_lm(str(gsft_dir))
    model = load_adapter(OutcomeRewardModel(lm), orm_dir).to(device()).eval()
    data = encode_solutions(tokenizer, prompts, samples, answer_end)
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    out = torch.empty(len(data))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = collate([data.ids[i] for i in chunk], [data.prompt_lengths[i] for i in chunk],
                         tokenizer.pad_token_id, device())  # fmt: skip
        out[torch.tensor(chunk)] = torch.sigmoid(model(inputs["input_ids"], inputs["attention_mask"])).cpu()
    return out.tolist()
