"""What every benchmark script records beside its numbers: the machine and command, each stage run
once and reused when finished, and the results merged into the benchmark's results.json.

Benchmark helpers, not part of the package: a script puts benchmarks/ on sys.path and imports this
module (and `timing` for timings), as benchmarks/adalora/bench.py does.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from lmforge.core.rundir import write_text_atomic


def benchmark_provenance() -> dict:
    """Device, torch version, date, command line and commit, recorded beside every benchmark result."""
    import os
    import platform
    import sys
    import time

    import torch

    cpu = f"{platform.machine()} CPU x{os.cpu_count()}"
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %z"),
        "command": "python " + " ".join(sys.argv),
        "commit": source_commit(),
    }


def source_commit() -> str | None:
    """The checked-out commit, with "+changes" when src/ or benchmarks/ differ from it (None outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True)
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "benchmarks"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def run_once(command: list[str], done_marker: Path, log: Path, cwd: Path) -> None:
    """A benchmark's step: run `command` (an lmforge CLI call, output to `log`) unless `done_marker`
    exists, so an interrupted benchmark picks up where it stopped; a failure stops the benchmark."""
    import sys

    if done_marker.is_file():
        print(f"reused: {done_marker.parent}", flush=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join(command[2:]) if command[1:2] == ["-m"] else " ".join(command)
    print(f"running: {shown}  (log {log})", flush=True)
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{shown} failed (exit {done.returncode}); see {log}")
    print(f"finished in {time.perf_counter() - started:.0f} s", flush=True)


def changed_settings(saved: str, wanted: str) -> list[str]:
    """The dotted keys whose values differ between two config.yaml texts: a benchmark refuses to reuse a
    run folder made with other settings and names these."""
    import yaml

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    a, b = flat(yaml.safe_load(saved) or {}), flat(yaml.safe_load(wanted) or {})
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def merge_benchmark_result(path: Path, key: str, result: dict) -> None:
    """Store `result` under `key` in the benchmark's results JSON, keeping the other keys."""
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged[key] = result
    write_text_atomic(path, json.dumps(merged, indent=1) + "\n")
    print(f"written: {path}")
