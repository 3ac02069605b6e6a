"""Messages to the user on stderr, written so they do not break progress bars."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def say(message: str) -> None:
    tqdm.write(f"lmforge: {message}", file=sys.stderr)
