"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a config typo, a missing file, a malformed row, an unknown model.

    The message must say what is wrong and where (file, line, key), in one line.
    """


class Interrupted(Exception):
    """Training stopped by SIGINT / SIGTERM after a checkpoint was saved; `--resume` continues it."""
