"""V-STaR's verifier: DPO (Rafailov et al. 2023, eq. 7) from G_SFT on the correct x incorrect pairs of
D_VER, with G_SFT as the frozen reference, then every test candidate scored by it.

Training is the shared loop (`core/training_run.py`) with LoRA on G_SFT's merged weights, its dropout
rates set to `model.dropout` when given and the run's seed (`train.seed`) set right before the adapters
are made, as each generator's SFT does (so the verifier does not depend on what ran before it in the
process). The reference log-probabilities of every pair are computed once, before the first step, and
kept in a file beside the run (`stages/verifier.reference.pt`, fingerprinted by the tokens), so neither
training nor a resumed run ever runs the reference model again. A step's loss is the mean over its
pairs (every micro-batch and process), so accumulation is exact. Held-out pairs (those of a few
training problems, carved by problem so that no problem is on both sides) give the evaluation: DPO
loss and reward accuracy, the share of pairs whose chosen completion gets the larger implicit reward.

Test-time scores of a candidate y of problem x (`score_candidates`):
- likelihood       log V(y|x), summed over y's tokens and EOS: the paper's score (section 3);
- mean_likelihood  the same per token, so long and short candidates compare on equal terms;
- implicit_reward  beta * (log V(y|x) - log G_SFT(y|x)), DPO's reward.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, seed_everything
from lmforge.core.stages import FINISHED, child_run
from lmforge.core.training_run import start_training
from lmforge.data.files import Examples, manifest_entry
from lmforge.data.pairs import Encoded, collate, encode_pair
from lmforge.errors import UserError
from lmforge.methods.vstar.dpo import (
    completion_logprobs,
    dpo_loss,
    fingerprint,
    load_reference,
    reference_logprobs,
    save_reference,
)
from lmforge.methods.vstar.stages import carve_by_problem, device, encode_solutions, verifier_run_config


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    problem_id: str
    prompt: str
    chosen: str  # a correct completion, ending as the task's exemplars do
    rejected: str  # an incorrect one


def encode_preferences(tokenizer, pairs: Sequence[PreferencePair], max_length: int) -> tuple[list, Encoded]:
    """Pairs whose two completions both fit, and their tokens: rows 2i (chosen) and 2i + 1 (rejected)."""
    kept, ids, prompt_lengths = [], [], []
    for pair in pairs:
        chosen = encode_pair(tokenizer, pair.prompt, pair.chosen, max_length)
        rejected = encode_pair(tokenizer, pair.prompt, pair.rejected, max_length)
        if chosen is None or rejected is None:
            continue
        kept.append(pair)
        ids += [chosen[0], rejected[0]]
        prompt_lengths += [chosen[1], rejected[1]]
    return kept, Encoded(ids, prompt_lengths)


def train_verifier(cfg: RunConfig, stages: Path, gsft_dir: Path, pairs: Sequence[PreferencePair]) -> Path:
    """The DPO verifier in stages/verifier/, from the finished G_SFT run `gsft_dir`; reused when finished."""
    from lmforge.adapters.lora import inject_lora, save_adapter
    from lmforge.models.causal_lm import load_causal_lm, set_dropout

    child = child_run(stages, "verifier")
    if child.state == FINISHED:
        say(f"verifier: finished earlier ({child.folder})")
        return child.folder
    v, opts = cfg.options, cfg.options.verifier
    model, tokenizer = load_causal_lm(str(gsft_dir))  # G_SFT merged: the reference and the starting point
    train_pairs, dev_pairs = carve_by_problem(pairs)
    train_pairs, train_data = encode_preferences(tokenizer, train_pairs, cfg.model.max_length)
    dev_pairs, dev_data = encode_preferences(tokenizer, dev_pairs, cfg.model.max_length)
    if not train_pairs:
        raise UserError(
            "verifier: no preference pairs to train on (no problem has both a correct and an incorrect solution)"
        )
    say(f"verifier: DPO on {len(train_pairs):,} pairs, {len(dev_pairs):,} held out, beta {opts.beta:g}")

    reference = {}
    for name, data in (("train", train_data), ("dev", dev_data)):
        path = stages / f"verifier.reference-{name}.pt"
        key = fingerprint(data, str(gsft_dir.resolve()))  # a cache of other tokens or another G_SFT is stale
        cached = load_reference(path, key) if len(data) else torch.zeros(0)
        if cached is None:
            cached = reference_logprobs(
                model.to(device()), data, tokenizer.pad_token_id, cfg.train.eval_batch_size, device()
            )
            save_reference(path, cached, key)
        reference[name] = cached  # (2P,): chosen at even rows, rejected at odd rows

    if cfg.model.dropout is not None:  # as the generators' SFT (the sft method) applies it
        set_dropout(model, cfg.model.dropout)
    # The run's seed, as each generator's SFT seeds itself: the adapters' initialisation (and, in one process,
    # the dropout masks that follow) then does not depend on what ran earlier in the process, so a run resumed
    # at this stage trains the verifier the uninterrupted run trains, and every process starts from the same
    # adapters as one process does.
    seed_everything(cfg.train.seed)
    if v.lora:
        inject_lora(model, v.target_modules, v.lora_r, v.lora_alpha, v.lora_dropout, [])
    verifier_cfg = verifier_run_config(cfg, gsft_dir, opts, f"D_VER preference pairs ({len(train_pairs):,})")
    lengths = [len(train_data.ids[2 * i]) + len(train_data.ids[2 * i + 1]) for i in range(len(train_pairs))]
    manifest = {  # prompt and chosen completion of each pair
        split: manifest_entry(Examples([p.prompt for p in ps], [p.chosen for p in ps], f"D_VER pairs ({split})"))
        for split, ps in (("train", train_pairs), ("eval", dev_pairs))
    }
    t = start_training(verifier_cfg, child.folder, child.resume, model, tokenizer, lengths, manifest)
    pad_id = tokenizer.pad_token_id

    def pair_batch(data: Encoded, indices: Sequence[int], device):
        rows = [r for i in indices for r in (2 * i, 2 * i + 1)]
        inputs = collate([data.ids[r] for r in rows], [data.prompt_lengths[r] for r in rows], pad_id, device)
        return inputs, inputs.pop("labels"), torch.tensor(rows)

    def micro_loss(micro: list[int], step_pairs: int) -> dict[str, torch.Tensor]:
        inputs, labels, rows = pair_batch(train_data, micro, t.accelerator.device)
        policy, _ = completion_logprobs(t.model, inputs, labels)  # (2B,)
        ref = reference["train"][rows].to(policy.device)
        loss, _ = dpo_loss(policy[0::2], policy[1::2], ref[0::2], ref[1::2], opts.beta)
        return {"loss": loss * len(micro) / step_pairs}  # loss is the mean over the micro-batch's pairs

    @torch.no_grad()
    def evaluate() -> dict:
        if not len(dev_pairs):
            return {}
        was_training = t.model.training
        t.model.eval()
        losses, right = [], 0
        for start in range(0, len(dev_pairs), cfg.train.eval_batch_size):
            chunk = list(range(start, min(start + cfg.train.eval_batch_size, len(dev_pairs))))
            inputs, labels, rows = pair_batch(dev_data, chunk, t.accelerator.device)
            policy, _ = completion_logprobs(t.model, inputs, labels)
            ref = reference["dev"][rows].to(policy.device)
            loss, stats = dpo_loss(policy[0::2], policy[1::2], ref[0::2], ref[1::2], opts.beta)
            losses.append(loss.item() * len(chunk))
            right += round(float(stats["reward_accuracy"]) * len(chunk))
        t.model.train(was_training)
        return {"dpo_loss": sum(losses) / len(dev_pairs), "reward_accuracy": right / len(dev_pairs)}

    t.evaluator = evaluate
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate(batch, partial(micro_loss, step_pairs=len(batch.examples)))
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)

    def save(model, tokenizer, out: Path) -> None:
        if v.lora:
            save_adapter(model, out, v.lora_r, v.lora_alpha, v.lora_dropout, v.target_modules, [],
                         base_model=str(gsft_dir), task_type="CAUSAL_LM")  # fmt: skip
        else:
            model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    t.finish(save, lambda final: {"labels": [], "pairs": len(train_pairs), "held_out_pairs": len(dev_pairs)})
    return child.folder


@torch.no_grad()
def score_candidates(
    verifier_dir: Path, gsft_dir: Path, prompts: dict[str, str], samples: Sequence, answer_end: str, beta: float,
    batch_size: int,
) -> list[dict]:  # fmt: skip
    """Every candidate's three scores (module docstring), in the order of `samples`."""
    from lmforge.models.causal_lm import load_causal_lm

    verifier, tokenizer = load_causal_lm(str(verifier_dir))
    reference, _ = load_causal_lm(str(gsft_dir))
    data = encode_solutions(tokenizer, prompts, samples, answer_end)
    log_v = reference_logprobs(verifier.to(device()), data, tokenizer.pad_token_id, batch_size, device())
    log_g = reference_logprobs(reference.to(device()), data, tokenizer.pad_token_id, batch_size, device())
    rows = []
    for i, s in enumerate(samples):
        n = data.targets(i)
        rows.append({
            "problem_id": s.problem_id, "index": s.index, "passed": s.passed,
            "likelihood": float(log_v[i]), "mean_likelihood": float(log_v[i]) / n,
            "implicit_reward": beta * (float(log_v[i]) - float(log_g[i])), "tokens": n,
        })  # fmt: skip
    return rows
