"""Unlabeled text for distillation and pretraining: the builtin `gutenberg` corpus or a text file.

`gutenberg` is 10 public-domain books bundled under `datasets/gutenberg/` (see its SOURCE.md).
Each book's Project Gutenberg header and license are cut off (only the text between the
`*** START OF` and `*** END OF` lines is kept), paragraphs are re-joined from their hard-wrapped
lines, and every paragraph is cut into passages of at most `words` words; passages shorter than
`min_words` (headings, chapter numbers) are dropped. A user's `.txt` file is read the same way,
paragraphs separated by blank lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmforge.errors import UserError

GUTENBERG_DIR = Path(__file__).resolve().parents[1] / "datasets" / "gutenberg"


def book_text(path: Path) -> str:
    """The text between a Project Gutenberg file's START and END lines."""
    text = path.read_text(encoding="utf-8-sig")
    start = re.search(r"^\*\*\* START OF .*$", text, re.M)
    end = re.search(r"^\*\*\* END OF .*$", text, re.M)
    if not start or not end:
        raise ValueError(f"{path}: no Project Gutenberg START / END lines")
    return text[start.end() : end.start()]


def passages(text: str, words: int = 48, min_words: int = 8) -> list[str]:
    out = []
    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        tokens = paragraph.split()
        for i in range(0, len(tokens), words):
            piece = tokens[i : i + words]
            if len(piece) >= min_words:
                out.append(" ".join(piece))
    return out


def load_corpus(name: str, words: int = 48, min_words: int = 8) -> list[str]:
    """Passages of the builtin `gutenberg` corpus (books in file-name order) or of a .txt file."""
    if name == "gutenberg":
        return [p for book in sorted(GUTENBERG_DIR.glob("*.txt")) for p in passages(book_text(book), words, min_words)]
    path = Path(name)
    if path.suffix != ".txt":
        raise UserError(f"corpus {name!r}: expected 'gutenberg' or a .txt file")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8") from None
    found = passages(text, words, min_words)
    if not found:
        raise UserError(f"{path}: no passage of at least {min_words} words")
    return found
