"""Every recipe, `lmforge` command and repository path that README.md and docs/*.md name exists, and
every example run folder named after a recipe (in the docs and in the CLI's help) is one that recipe
would make.

What counts as a mention (inline code spans and fenced code blocks, word by word, and relative
Markdown links):
- a recipe: `<method>/<name>` for a method that has a recipes folder (`lora/minilm_sst2`), and the
  argument of `lmforge run`;
- a command: the word after `lmforge` (`lmforge eval-gen ...`);
- a repository path: a word starting with a top-level folder of the repository (`benchmarks/`,
  `tests/`, ...) or of the package (`core/`, `methods/`, ...: read under src/lmforge/), or a bare
  Python file name (`tree.py`: some file of that name under src/, tests/ or benchmarks/);
- a default run folder: `runs/<method>-<recipe>-<time or ...>`, which `lmforge run <method>/<recipe>`
  names (cli/main.py); a `--run-dir` of the user's choosing (`runs/mine`) is not checked.
Words with a placeholder (`<task>`, `*`, `...`, `$VAR`, `NNN`) are patterns, not paths, and are not
checked; nor are absolute paths, URLs and the files inside a run folder (`final.json`), which the
docs name as what a run writes, not as repository files. Files of other projects that a comparison
names are listed, each with its reason, in OTHER_PROJECTS_FILES.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmforge.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "lmforge"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPE_METHODS = sorted(p.name for p in (PACKAGE / "recipes").iterdir() if p.is_dir())
RECIPES = {f"{p.parent.name}/{p.stem}" for p in (PACKAGE / "recipes").glob("*/*.yaml")}
ROOT_DIRS = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in (".git", ".venv"))
PACKAGE_DIRS = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
PLACEHOLDER = re.compile(r"[<>*{}$]|\.\.\.|NNN|HOST|RUN_DIR")
PATHLIKE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
RUN_FOLDER = re.compile(r"^runs/([a-z0-9_]+-[a-z0-9_]+)-(?:\.\.\.|\d{8}-\d{6})")
# The README names the modules of methods it lists as planned: those folders do not exist yet.
PLANNED_ROW = re.compile(r"^\|.*\|\s*planned\s*\|")
# Files of other projects that the docs name when they compare lmforge with them (not ours to find).
OTHER_PROJECTS_FILES = {
    "data_augmentation.py": "TinyBERT's official code (huawei-noah/Pretrained-Language-Model), docs/tinybert.md",
    "task_distill.py": "TinyBERT's official code (huawei-noah/Pretrained-Language-Model), docs/tinybert.md",
}
# Words that may come before `lmforge` on a command line: variables, launchers, interpreters.
LAUNCHER = re.compile(r"^(?:[A-Z_]+=\S*|-m|accelerate|launch|nohup|time|\S*python[0-9.]*)$")


def _code_spans(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, text, its words) of every inline code span and every line of a fenced code block
    (comments cut), outside the README's planned-method rows."""
    out = []
    in_block = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if PLANNED_ROW.match(line):
            continue
        spans = [line.split("#", 1)[0]] if in_block else re.findall(r"`([^`]+)`", line)
        out.extend((number, span, [word.strip("\"'(),;:") for word in span.split()]) for span in spans)
    return out


def _invocation(words: list[str]) -> int | None:
    """Where the command word is, when the words are an `lmforge` command line (`lmforge run ...`,
    `HF_HUB_OFFLINE=1 lmforge ...`, `accelerate launch -m lmforge ...`), else None."""
    for i, word in enumerate(words):
        if word == "lmforge":
            return i + 1 if i + 1 < len(words) else None
        if not LAUNCHER.match(word):
            return None
    return None


def _links(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"^[a-z]+:|^#", target):
                out.append((number, target.split("#", 1)[0]))
    return out


def _repo_path_exists(word: str) -> bool | None:
    """True / False for a word that names a repository path, None for a word that does not."""
    if PLACEHOLDER.search(word) or not PATHLIKE.match(word) or word.startswith(("/", ".venv/")):
        return None
    first = word.split("/", 1)[0]
    if "/" in word and first in ROOT_DIRS:
        return (ROOT / word).exists()
    if "/" in word and first in PACKAGE_DIRS:
        return (PACKAGE / word).exists()
    if "/" not in word and word.endswith(".py") and word not in OTHER_PROJECTS_FILES:
        return any(any(base.rglob(word)) for base in (ROOT / "src", ROOT / "tests", ROOT / "benchmarks"))
    return None


def _mentions():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for doc in DOCS:
        name = doc.relative_to(ROOT)
        for line, span, words in _code_spans(doc):
            where = f"{name}:{line}: {span.strip()!r}"
            verb = _invocation(words)
            if verb is not None:
                yield where, f"command {words[verb]!r}", words[verb] in commands
                recipe = words[verb + 1] if words[verb] == "run" and verb + 1 < len(words) else None
                if recipe and not PLACEHOLDER.search(recipe) and not recipe.startswith("-"):
                    yield where, f"recipe {recipe!r}", recipe in RECIPES or (ROOT / recipe).is_file()
            for word in words:
                if re.fullmatch(r"[a-z_]+/[a-z0-9_]+", word) and word.split("/")[0] in RECIPE_METHODS:
                    yield where, f"recipe {word!r}", word in RECIPES
                elif (run := RUN_FOLDER.match(word)) is not None:
                    yield where, f"run folder {word!r}", run.group(1).replace("-", "/", 1) in RECIPES
                elif (exists := _repo_path_exists(word)) is not None:
                    yield where, f"path {word!r}", exists
        for line, target in _links(doc):
            yield f"{name}:{line}", f"link {target!r}", (doc.parent / target).exists()


MENTIONS = list(_mentions())


def test_the_docs_name_things_to_check():
    # The parser above must find mentions of every kind, or the test below would pass on nothing.
    kinds = {what.split()[0] for _, what, _ in MENTIONS}
    assert {"command", "recipe", "path", "link"} <= kinds
    assert len(MENTIONS) > 200


def test_every_recipe_command_and_path_the_docs_name_exists():
    missing = [f"{where}: {what}" for where, what, ok in MENTIONS if not ok]
    assert not missing, "named in the docs but not found:\n" + "\n".join(missing)


def _help_texts() -> list[tuple[str, str]]:
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices
    return [(f"lmforge {name} --help", sub.format_help()) for name, sub in subparsers.items()]


@pytest.mark.parametrize("command, text", _help_texts(), ids=lambda v: v if v.startswith("lmforge") else "")
def test_help_examples_name_run_folders_a_recipe_makes(command, text):
    for word in text.split():
        if (run := RUN_FOLDER.match(word)) is not None:
            assert run.group(1).replace("-", "/", 1) in RECIPES, f"{command}: {word} is no recipe's run folder"
