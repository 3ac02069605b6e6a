"""Run a program in a fresh Python process: fine for the known reference code these tests execute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_program(program: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", program], timeout=10, capture_output=True, text=True, cwd=cwd)
