"""The built wheel, installed into a fresh venv, lists and runs the shipped recipes from any folder.

How the venv gets the test venv's packages (torch, transformers, ...) without the checkout's lmforge:
`python -m venv --system-site-packages`, run by the test venv's python, links the new venv to the *base*
interpreter's site-packages (venv's `home` is the interpreter the test venv was made from), not to the
test venv's, so it would have no torch. Instead the new venv gets a .pth file holding one line: the
test venv's site-packages folder. A plain path line only appends that folder to sys.path, after the new
venv's own site-packages; the .pth files inside it are not executed, so the editable install's
`__editable__.lmforge-*.pth` (which puts the checkout's src/ on sys.path) never runs there. The wheel's
lmforge is then the only one importable, and the test checks so (`lmforge.__file__`). The wheel is
installed before that .pth is written, so pip sees a venv with nothing in it and removes nothing.
PYTHONPATH is dropped and PYTHONNOUSERSITE set, so neither can bring the checkout back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src/lmforge/recipes").glob("*/*.yaml"))


def _run(command: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


def build_wheel(out: Path, scratch: Path) -> Path:
    """Build from a copy of what the wheel is made of, so the build's build/ and egg-info folders do not
    land in the checkout. Offline: no index, no build isolation (setuptools comes from the test venv)."""
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out, "."], cwd=source)
    (wheel,) = out.glob("lmforge-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and the test venv's packages readable after its own (see above)."""
    _run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    python = where / "bin" / "python"
    # The test venv's pip installs into the new venv (--python), which holds nothing yet.
    install = ["install", "--no-deps", "--no-index", "-q", wheel]
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python, *install], cwd=where)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=where).stdout.strip()
    (Path(site) / "test-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where / "bin"


@pytest.mark.slow
def test_the_wheel_ships_the_recipes_and_runs_one_from_any_folder(tmp_path):
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert SHIPPED and set(SHIPPED) <= names, f"recipes missing from the wheel: {set(SHIPPED) - names}"
    assert "lmforge-0.1.0.dist-info/licenses/LICENSE" in names

    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    elsewhere = tmp_path / "elsewhere"  # no recipes/ folder, not the checkout
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")

    show = "import lmforge.cli.recipes as r; print(r.__file__); print(r.shipped_recipes_dir())"
    where = _run([bin_dir / "python", "-c", show], cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).is_relative_to(tmp_path / "venv") for p in where), f"not the wheel's lmforge: {where}"

    listed = _run([bin_dir / "lmforge", "list", "recipes"], cwd=elsewhere, env=env).stdout
    assert {line.split()[0] for line in listed.splitlines()[1:]} == {
        p.removeprefix("lmforge/recipes/").removesuffix(".yaml") for p in SHIPPED
    }

    run_dir = tmp_path / "run"
    command = [
        bin_dir / "lmforge",
        "run",
        "lora/minilm_sst2",
        "model.name=tiny-bert",
        "train.max_steps=5",
        "train.batch_size=8",
        "data.max_train_examples=40",
        "data.max_eval_examples=16",
        "--run-dir",
        run_dir,
    ]
    done = _run(command, cwd=elsewhere, env=env)
    assert re.search(r"^accuracy [0-9.]+ \(loss", done.stdout, re.M), done.stdout  # the run's result line
    assert (run_dir / "final").is_dir() and (run_dir / "report.html").is_file()
    assert list(elsewhere.iterdir()) == []  # everything went to --run-dir
