"""How the command ends when the process is told to stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM (a batch system's cancel) and SIGHUP (the terminal or ssh session closed) end the
    command like an interrupt: ``finally`` blocks and exit handlers run (temporary folders are
    removed; an output stays resumable). A signal the process was told to ignore (``nohup``)
    stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {}
    for number in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            previous[number] = signal.signal(number, terminated)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
