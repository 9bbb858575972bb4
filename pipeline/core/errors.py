"""The exception type for user mistakes: the CLI prints its message on one line, no traceback;
and how a library's exception is quoted in such a line."""

from __future__ import annotations


class CellpipeError(Exception):
    """Bad input or a missing prerequisite; the message says what and where, in one line."""


class RLEError(CellpipeError, ValueError):
    """A Kaggle run-length encoding that the competition's validator would reject.

    `detail` says what is wrong; `instance` is the index of the offending text among several.
    """

    def __init__(self, detail: str, instance: int | None = None):
        self.detail = detail
        self.instance = instance
        super().__init__(detail if instance is None else f"instance {instance}: {detail}")


def full_message(error: BaseException) -> str:
    """An exception's whole message on one line (its lines joined), or its type when it has none
    (an EOFError from a truncated file says nothing)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__
