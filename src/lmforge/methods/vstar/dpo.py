"""The DPO verifier of V-STaR: sequence log-probabilities, the loss, and the frozen reference's log-probabilities.

V-STaR (Hosseini et al., "V-STaR: Training Verifiers for Self-Taught Reasoners", COLM 2024, arXiv
2402.06457) trains a verifier V on (x, y+, y-) triples: a problem, a correct and an incorrect
solution sampled from the generator. V starts from the SFT generator G_SFT, which is also the frozen
reference, and is trained with DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):

    L = -log sigmoid(beta * ((log V(y+|x) - log G_SFT(y+|x)) - (log V(y-|x) - log G_SFT(y-|x))))

averaged over the pairs. log p(y|x) is the sum of the log-probabilities of the completion's tokens and its
EOS, exactly the tokens SFT trains on (`data/pairs.py`). beta * (log V(y|x) - log G_SFT(y|x)) is DPO's
implicit reward; at test time V-STaR ranks candidates by the verifier's likelihood log V(y|x) instead,
and `verifier.py` offers both (and the per-token likelihood).

Hyperparameters: beta defaults to DPO's 0.1 (Rafailov et al. 2023, appendix B: beta = 0.1 unless noted
otherwise); the learning rate, epochs and LoRA rank are the recipe's (`vstar.verifier.*`), sized for a
270M model on a CPU rather than taken from the paper's 7B runs.

The reference never changes, so its log-probabilities are computed once before training
(`reference_logprobs`) and cached on disk under a fingerprint of the token ids (`save_reference`,
`load_reference`): training runs the verifier only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.pairs import Encoded, collate
from lmforge.models.lm_logits import logits_at

BETA = 0.1  # DPO's default beta (Rafailov et al. 2023, appendix B); see the module docstring


def completion_logprobs(
    model, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) sums of log p(label) over each row's supervised tokens (labels != -100) and (B,) their counts.

    `inputs` and `labels` are a `collate` batch with "labels" popped: position t's logits predict
    labels[t + 1]. The output layer runs at the supervised positions only (`logits_at`); the log-softmax is
    taken in float32. Differentiable with respect to the model's weights."""
    target = labels[:, 1:]  # (B, T-1): the token each position predicts
    positions = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): positions that predict a supervised token
    positions[:, :-1] = target != -100
    logits = logits_at(model, inputs, positions).float()  # (N, V), rows in row-major order of `positions`
    picked = torch.log_softmax(logits, dim=-1).gather(1, target[positions[:, :-1]].unsqueeze(1)).squeeze(1)  # (N,)
    rows = positions.nonzero()[:, 0]  # (N,): the batch row of each picked value, in the same order
    sums = torch.zeros(labels.shape[0], dtype=picked.dtype, device=picked.device)  # (B,)
    sums = sums.index_add(0, rows, picked)  # (B,)
    return sums, positions.sum(dim=1)  # (B,), (B,)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = BETA,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO's loss (eq. 7), the mean over the B pairs, from four (B,) sequence log-probabilities; and detached
    statistics: the mean implicit rewards beta * (log pi - log ref) of the chosen and the rejected
    completions, the share of pairs whose chosen reward is the larger (reward accuracy) and the mean margin."""
    chosen = beta * (policy_chosen - reference_chosen)  # (B,)
    rejected = beta * (policy_rejected - reference_rejected)  # (B,)
    loss = -F.logsigmoid(chosen - rejected).mean()  # ()
    chosen, rejected = chosen.detach(), rejected.detach()
    stats = {
        "reward_chosen": chosen.mean(),
        "reward_rejected": rejected.mean(),
        "reward_accuracy": (chosen > rejected).float().mean(),
        "reward_margin": (chosen - rejected).mean(),
    }
    return loss, stats


@torch.no_grad()
def reference_logprobs(model, encoded: Encoded, pad_id: int, batch_size: int, device) -> torch.Tensor:
    """(len(encoded),) float32 on the CPU: the model's log-probability of every encoded completion (and its
    EOS) given its prompt, in eval mode. Batches are formed in order of length (little padding); the result
    is in the original order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded.ids[i]))
    out = torch.empty(len(encoded), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = collate([encoded.ids[i] for i in chunk], [encoded.prompt_lengths[i] for i in chunk], pad_id, device)
        labels = inputs.pop("labels")
        sums, _ = completion_logprobs(model, inputs, labels)  # (b,)
        out[torch.tensor(chunk)] = sums.cpu()
    model.train(was_training)
    return out


def fingerprint(encoded: Encoded, extra: str = "") -> str:
    """sha256 of the token ids and prompt lengths (what is scored), and of `extra` (e.g. the reference model's name)."""
    digest = hashlib.sha256(extra.encode())
    for ids, prompt_length in zip(encoded.ids, encoded.prompt_lengths):
        digest.update(f"\n{prompt_length}:{','.join(map(str, ids))}".encode())
    return digest.hexdigest()


def save_reference(path: Path | str, logprobs: torch.Tensor, fingerprint: str) -> None:
    """Write the reference log-probabilities with their fingerprint: to a temporary file, then renamed, so a
    crash never leaves a partial cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"fingerprint": fingerprint, "logprobs": logprobs.detach().cpu()}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_reference(path: Path | str, fingerprint: str) -> torch.Tensor | None:
    """The cached reference log-probabilities, or None when there is no cache or it was computed for other
    data (another fingerprint)."""
    path = Path(path)
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("fingerprint") != fingerprint:
        return None
    return saved["logprobs"]
