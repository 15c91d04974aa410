"""Exceptions a user can cause. Each message says what was wrong and what would be valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class DensePredError(ValueError):
    """Base of every error a user of densepred can cause (bad config, shapes, files)."""


class ConfigError(DensePredError):
    """A configuration file or value is invalid."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` hint for a misspelt key, or ``""`` if nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and its message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def listed(names: Sequence[str], most: int = 12) -> str:
    """Names for a message: the first ``most`` of them and how many more (``none`` for none)."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more or "none"


class Cancelled(Exception):
    """A run stopped because its progress callback asked it to (a Cancel button).

    A file output stays unfinished and resumable; an in-memory result is not returned.
    """
