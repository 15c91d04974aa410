"""How the command ends when the process is told to stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM (a batch system's cancel) ends the command like an interrupt: ``finally`` blocks and
    exit handlers run (temporary folders are removed; an output stays resumable)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
