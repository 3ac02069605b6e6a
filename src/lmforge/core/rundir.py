"""The run folder: config.yaml, manifest.json, metrics.jsonl, checkpoints/, final/, report.html.

`metrics.jsonl` is appended one flushed line at a time; on resume, lines past the restored
checkpoint's step are dropped so the file reads as if the run had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

import lmforge
from lmforge.core.hardware import cpu_support
from lmforge.core.processes import is_main_process, wait_for_everyone
from lmforge.errors import UserError

PACKAGES = ["torch", "transformers", "accelerate", "peft", "numpy", "safetensors", "tokenizers"]


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.manifest = self.path / "manifest.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.report = self.path / "report.html"

    def log(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def records(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out

    def truncate_metrics(self, step: int) -> None:
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def write_json(self, relative: str, obj: dict) -> Path:
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
        return path


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def open_parent_run(run_dir: Path, config_yaml: str, seed: int, manifest_data: dict, resume: bool) -> RunDir:
    """The folder of a run made of stages and child runs (CReST's generations, a stream's tasks): created
    with config.yaml, manifest.json (`manifest_data` under "data") and stages/, or, with `resume`, the
    existing one; a folder in the way, or one already finished, is a UserError. Call it after every input
    is checked.

    Under `accelerate launch` every process calls it: the main process makes the folder, the others wait for it
    (and, like the main one, read what is there when resuming)."""
    run = RunDir(run_dir)
    main = is_main_process()  # also refuses a launch whose processes would each run alone
    if not resume:
        if main:
            if run.path.exists() and any(run.path.iterdir()):
                raise UserError(f"{run.path}: run folder already exists; add --resume to continue it or pick --run-dir")
            (run.path / "stages").mkdir(parents=True)
            write_text_atomic(run.manifest, json.dumps(build_manifest(seed, manifest_data), indent=1) + "\n")
            write_text_atomic(run.config, config_yaml)  # last: a folder with a config.yaml is resumable
        wait_for_everyone()
    elif not run.config.is_file():
        raise UserError(f"{run.path}: no config.yaml here, so nothing to resume")
    elif (run.path / "final.json").is_file():
        raise UserError(f"{run.path}: this run already finished; nothing to resume")
    return run


def publish_folder(source: Path, target: Path) -> None:
    """Make `target` a copy of the folder `source` (a child run's final/ as its parent's), with hard links
    where the file system allows them; built beside `target` and renamed into place."""
    import shutil

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=link_or_copy)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def check_output_folder(path: Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be made: `path` or a folder above it is a
    file (found only at the end of a long evaluation otherwise). Missing folders are made later."""
    path = Path(path).expanduser()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "" if folder == path else f"{folder} is "
                raise UserError(f"{flag} {path}: {what}a file, not a folder")
            return


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, before any work, a file to write whose folder does not exist (a typo is not made into
    new folders) or that is a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path}: a folder; name the file to write")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: no folder {path.parent} to write it in")


def new_run_path(label: str, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / f"{label.replace('/', '-')}-{stamp}"


def fingerprint(texts: list[str], labels: list[str]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=False):
        digest.update(text.encode() + b"\t" + label.encode() + b"\n")
    return digest.hexdigest()[:16]


def build_manifest(seed: int, data: dict) -> dict:
    return {
        "lmforge_version": lmforge.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
        "seed": seed,
        "hardware": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_bfloat16": asdict(cpu_support()),  # whether bfloat16 runs on dedicated units here
        },
        "packages": {name: _version(name) for name in PACKAGES},
        "data": data,
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
