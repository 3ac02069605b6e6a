"""Atomic, resumable checkpoints that never run code when loaded.

A checkpoint folder `step-00000120/` holds the trainable tensors (`model.safetensors`), the loop's
TrainState (`state.json`), and the optimizer and scheduler states with the RNG states of python /
numpy / torch as `training_state.json` + `training_state.safetensors`; a recipe that keeps state of
its own (AdaLoRA's importance averages) adds `extra.json` + `extra.safetensors`. A checkpoint may
come from someone else, so nothing in it is unpickled: tensors go to safetensors, everything else
(numbers, strings, lists, tuples, dicts) to JSON, where each tensor is a reference into the
safetensors file. Checkpoints of the old format (`training_state.pt`, `extra.pt`: pickles, which can
run any code when loaded) are refused, not read.

It is written under a temporary name and renamed in one `os.replace`, so a crash (even `kill -9`)
leaves either a complete checkpoint or none; leftover temporary folders are removed at the next
save or resume. A full disk removes the partial folder at once and stops the run with one line
saying so: the earlier checkpoints are untouched, and `--resume` continues from the last of them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import UserError, disk_full, first_line

TMP_PREFIX = ".tmp-"
TRAINING_STATE = "training_state"  # optimizer, scheduler and RNG states
EXTRA_STATE = "extra"  # a recipe's own state
STATE_FORMAT = 1  # the layout of `<name>.json`; bump when it changes
PICKLES = ("training_state.pt", "extra.pt")  # what checkpoints of the old format held
# What goes wrong when a file is damaged, crafted or from another run (never a bug of ours to hide).
BAD_STATE = (KeyError, IndexError, TypeError, ValueError, RuntimeError, RecursionError)


def capture_rng() -> dict:
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    rng = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
        "numpy": (name, keys.tolist(), pos, has_gauss, cached_gaussian),  # MT19937 keys as plain ints
        "torch": torch.get_rng_state(),  # a uint8 tensor
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, cached_gaussian = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
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
    try:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng()}
        save_state(tmp, TRAINING_STATE, training)
        if extra is not None:
            save_state(tmp, EXTRA_STATE, extra)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    except (OSError, SafetensorError) as e:
        if not disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # the space it took goes back; no partial checkpoint stays
        last = latest_checkpoint(folder)
        kept = f"the last good checkpoint, {last.name}, is intact" if last else "no earlier checkpoint was saved"
        then = f"continues from {last.name}" if last else "starts the run again"
        raise UserError(
            f"{folder}: the disk is full, so checkpoint step {step} was not saved; {kept}: free some space, "
            f"then the same command with --resume {then}"
        ) from None
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
    """Restore tensors, optimizer, scheduler and RNG from `path`; returns the saved state dict.

    A damaged, crafted or foreign checkpoint is a UserError naming the file; nothing is unpickled."""
    refuse_pickles(path)
    tensors = read_tensors(path / "model.safetensors")
    unknown = set(tensors) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise UserError(
            f"{path / 'model.safetensors'}: tensors this run's model does not have ({', '.join(sorted(unknown)[:3])}); "
            "the checkpoint is from another model or method"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a shape that differs
        raise UserError(f"{path / 'model.safetensors'}: does not fit this run's model: {first_line(e)}") from None
    training = load_state(path, TRAINING_STATE)
    try:
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        restore_rng(training["rng"])
    except BAD_STATE as e:
        raise UserError(f"{path / (TRAINING_STATE + '.json')}: does not fit this run: {first_line(e)}") from None
    try:
        return json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path / 'state.json'}: unreadable: {first_line(e)}") from None


def load_extra(path: Path) -> dict | None:
    """The recipe's own state saved with checkpoint `path` (None when it saved none)."""
    refuse_pickles(path)
    return load_state(path, EXTRA_STATE) if (path / f"{EXTRA_STATE}.json").is_file() else None


def restore_extra(path: Path, load: Callable[[dict], None]) -> None:
    """Give the recipe's own state saved with checkpoint `path` to `load` (AdaLoRA's allocator); a missing
    one (a checkpoint of another method) or one that does not fit is a UserError naming the file."""
    state = load_extra(path)
    where = path / f"{EXTRA_STATE}.json"
    if state is None:
        raise UserError(
            f"{where}: missing, but this method keeps its own state in every checkpoint; the "
            "checkpoint is from another method or incomplete"
        )
    try:
        load(state)
    except (*BAD_STATE, AttributeError) as e:
        raise UserError(f"{where}: does not fit this run: {first_line(e)}") from None


def refuse_pickles(path: Path) -> None:
    """Refuse a checkpoint of the old format: its pickles could run any code when loaded."""
    for name in PICKLES:
        if (path / name).exists():
            raise UserError(
                f"{path / name}: a pickle file, which lmforge never loads (unpickling can run any code); "
                "checkpoints written before lmforge stored their state as safetensors + JSON cannot be "
                "resumed: start the run again in a new --run-dir"
            )


# ---- state as JSON + safetensors ------------------------------------------------------------------


def save_state(folder: Path, name: str, value) -> None:
    """Write `value` (tensors, None, bools, numbers, strings, and lists, tuples and dicts of them) as
    `name.json`, where each tensor is {"tensor": key} into `name.safetensors`."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(value, name, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps({"format": STATE_FORMAT, "state": tree}))


def load_state(folder: Path, name: str):
    """The value `save_state` wrote; a damaged or crafted file is a UserError naming it."""
    path = folder / f"{name}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing, so the checkpoint is incomplete") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON: {first_line(e)}") from None
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT or "state" not in saved:
        raise UserError(f"{path}: not an lmforge checkpoint state (format {STATE_FORMAT} expected)")
    tensors = read_tensors(folder / f"{name}.safetensors")
    try:
        return _decode(saved["state"], tensors)
    except BAD_STATE as e:
        raise UserError(f"{path}: {first_line(e)}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing, so the checkpoint is incomplete") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file: {first_line(e)}") from None


def read_weights(path: Path) -> dict:
    """The tensors of one safetensors file; a missing, damaged or cut-short file is a UserError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file, damaged or cut short ({first_line(e)})") from None


def _encode(value, where: str, tensors: dict[str, torch.Tensor]):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))  # numbered: dict keys joined into names could collide
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()  # a copy: safetensors refuses shared storage
        return {"tensor": key}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]", tensors) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{where}[{i}]", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _encode(v, f"{where}.{k}", tensors) for k, v in value.items()}}
        if all(type(k) in (str, int) for k in value):  # an optimizer's state: int keys
            return {"items": [[k, _encode(v, f"{where}.{k}", tensors)] for k, v in value.items()]}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be saved in a checkpoint (no pickles)")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(n, tensors) for n in node]
    if isinstance(node, dict) and len(node) == 1:
        ((tag, body),) = node.items()
        if tag == "tensor" and isinstance(body, str):
            if body not in tensors:
                raise KeyError(f"tensor {body!r} is not in the safetensors file")
            return tensors[body]
        if tag == "tuple" and isinstance(body, list):
            return tuple(_decode(n, tensors) for n in body)
        if tag == "dict" and isinstance(body, dict):
            return {k: _decode(v, tensors) for k, v in body.items()}
        if tag == "items" and isinstance(body, list) and all(_is_item(pair) for pair in body):
            return {k: _decode(v, tensors) for k, v in body}
    raise ValueError(f"unexpected value {json.dumps(node)[:80]}")


def _is_item(pair) -> bool:
    """[key, value] with a str or int key (an optimizer's state is keyed by parameter number)."""
    return isinstance(pair, list) and len(pair) == 2 and type(pair[0]) in (str, int)
