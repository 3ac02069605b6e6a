"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

import errno
import reprlib

ECHO_LIMIT = 200  # characters of a user's value echoed in an error message

_echo = reprlib.Repr()
_echo.maxstring = _echo.maxother = ECHO_LIMIT
_echo.maxlevel, _echo.maxlist, _echo.maxtuple, _echo.maxdict, _echo.maxset = 3, 10, 10, 10, 10


class UserError(Exception):
    """Bad input: a config typo, a missing file, a malformed row, an unknown model.

    The message must say what is wrong and where (file, line, key), in one line.
    """


class Interrupted(Exception):
    """Training stopped by SIGINT / SIGTERM after a checkpoint was saved; `--resume` continues it."""


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """`value`'s repr for an error message, cut to `limit` characters with "...": a value read from a
    file can be megabytes long (or a nested structure of millions of items), and the message must
    stay one short line. reprlib never builds the whole repr."""
    return cut(_echo.repr(value), limit)


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters with "..." (a list of names read from a file, say)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message for a one-line error (its type's name when empty)."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


def disk_full(error: BaseException) -> bool:
    """Whether a failed write ran out of space (safetensors reports it as "os error 28" in its message)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return any(f"os error {code}" in str(error) for code in (errno.ENOSPC, errno.EDQUOT))
