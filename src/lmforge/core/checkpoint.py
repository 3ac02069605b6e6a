"""Atomic, resumable checkpoints.

A checkpoint folder `step-00000120/` holds the trainable tensors (`model.safetensors`), the
optimizer and scheduler states, the RNG states of python / numpy / torch, and `state.json`
(the loop's TrainState), and `extra.pt` when the recipe keeps state of its own (AdaLoRA's
importance averages). It is written under a temporary name and
renamed in one `os.replace`, so a crash (even `kill -9`) leaves either a complete checkpoint or
none; leftover temporary folders are removed at the next save or resume.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TMP_PREFIX = ".tmp-"


def capture_rng() -> dict:
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def remove_partial(folder: Path) -> None:
    for tmp in folder.glob(TMP_PREFIX + "*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(
    folder: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    state: dict,
    keep: int,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically; keep only the `keep` most recent."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial(folder)
    final = folder / f"step-{step:08d}"
    tmp = folder / f"{TMP_PREFIX}step-{step:08d}"
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng()},
        tmp / "training_state.pt",
    )
    if extra is not None:
        torch.save(extra, tmp / "extra.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # the same step saved twice (e.g. epoch end and a signal): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore tensors, optimizer, scheduler and RNG from `path`; returns the saved state dict."""
    tensors = load_file(str(path / "model.safetensors"))
    missing = set(tensors) - {n for n, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"{path}: checkpoint tensors not in the model: {sorted(missing)[:3]}")
    model.load_state_dict(tensors, strict=False)
    training = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    restore_rng(training["rng"])
    return json.loads((path / "state.json").read_text())


def load_extra(path: Path) -> dict | None:
    """The recipe's own state saved with checkpoint `path` (None when it saved none)."""
    extra = path / "extra.pt"
    return torch.load(extra, weights_only=False) if extra.is_file() else None
