"""The layering of docs/architecture.md holds: the import contracts in pyproject.toml ([tool.importlinter])
are kept, and only cli/ defines subcommands."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "lmforge"
# argparse's calls that create subcommands; a module outside cli/ that makes them is a second CLI.
SUBCOMMAND_CALL = re.compile(r"\.(add_parser|add_subparsers)\(")


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"{lint_imports} is missing: install the test extra (pip install -e '.[test]')"
    environment = {**os.environ, "COLUMNS": "200"}  # its report wraps lines at the terminal's width
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    report = result.stdout + result.stderr
    if result.returncode != 0:
        # The broken contracts' section names each forbidden import with its module and line.
        broken = report[report.find("Broken contracts") :] if "Broken contracts" in report else report
        pytest.fail(f"lint-imports: [tool.importlinter] in pyproject.toml is broken:\n{broken}", pytrace=False)
    assert "0 broken" in report


def test_only_cli_defines_subcommands():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if SUBCOMMAND_CALL.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "subcommands are defined only in src/lmforge/cli/; move these there:\n" + "\n".join(offenders)


def test_the_subcommand_scan_sees_a_subcommand():
    """The pattern matches the calls cli/ makes, so the scan above is not vacuous."""
    cli_lines = [line for path in (PACKAGE / "cli").rglob("*.py") for line in path.read_text().splitlines()]
    assert any(SUBCOMMAND_CALL.search(line) and "add_subparsers" in line for line in cli_lines)
    assert any(SUBCOMMAND_CALL.search(line) and "add_parser" in line for line in cli_lines)
