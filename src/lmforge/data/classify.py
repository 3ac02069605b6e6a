"""Sequence classification mechanics shared by recipes: encode, batch, loss, predict, evaluate."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmforge.core.metrics import classification_metrics


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (batches are padded to their own longest)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def collate(ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: input_ids and attention_mask of shape (B, T)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention_mask[i, : len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the batch, in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


@torch.no_grad()
def predict_logits(
    model, ids: list[list[int]], pad_id: int, batch_size: int, device, desc: str | None = None
) -> np.ndarray:
    """Logits (N, C) in the input order; batches are formed by length to waste little padding."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=desc is None):
        chunk = order[start : start + batch_size]
        logits = model(**collate([ids[i] for i in chunk], pad_id, device)).logits.float().cpu()
        for i, row in zip(chunk, logits, strict=False):
            out[i] = row
    model.train(was_training)
    return torch.stack(out).numpy()


def evaluate(
    model,
    ids: list[list[int]],
    label_ids: list[int],
    n_labels: int,
    pad_id: int,
    batch_size: int,
    device,
    desc: str | None = "eval",
) -> dict:
    """accuracy, macro_f1, mean loss and the confusion matrix on one labelled split."""
    logits = predict_logits(model, ids, pad_id, batch_size, device, desc)
    labels = np.asarray(label_ids)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {"loss": loss, **classification_metrics(labels, logits.argmax(-1), n_labels)}
