"""Progress of a long run: a bar on a terminal, plain rate-limited log lines in a batch job.

A batch log (stderr not a terminal, as under SLURM) gets one line per ``interval`` seconds at
most, plus the last one, never a line per block.

A program (a GUI) passes a callback instead of ``True``: it is called with the
:class:`Progress` after every update and before every batch is computed (:meth:`Progress.poll`),
and it cancels the run by raising :class:`densepred.errors.Cancelled`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import DensePredError

LOG_INTERVAL = 60.0  # seconds between progress lines in a batch log


class Progress:
    """``update(voxels)`` as work finishes; ``workers`` is shown beside the rate.

    ``enabled``: ``True`` (a bar or log lines), ``False`` (silent) or a callback (see above).
    """

    def __init__(self, total: int, desc: str, enabled: ProgressOption = True, interval: float = LOG_INTERVAL,
                 terminal: bool | None = None):
        check_progress(enabled)
        self.callback = enabled if callable(enabled) else None
        self.total, self.desc, self.enabled, self.interval = total, desc, enabled is True, interval
        self.done = 0
        self._lock = threading.Lock()
        self.workers: int | None = None
        self._start = self._last = time.monotonic()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = self._make_bar() if self.enabled and terminal else None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._start

    def poll(self) -> None:
        """Give the callback a chance to cancel (before a batch is computed)."""
        if self.callback is not None:
            self.callback(self)

    def _make_bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=self.total, unit="vox", unit_scale=True, desc=self.desc)

    def update(self, voxels: int, workers: int | None = None) -> None:
        """Count finished voxels (from any thread: the pipeline's writers share the bar)."""
        with self._lock:
            self._update(voxels, workers)

    def _update(self, voxels: int, workers: int | None) -> None:
        self.done += voxels
        self.workers = workers if workers is not None else self.workers
        self.poll()
        if self._bar is not None:
            self._bar.update(voxels)
            if workers is not None:
                self._bar.set_postfix(workers=workers, refresh=False)
            return
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            print(f"densepred: {self.line(now - self._start)}", file=sys.stderr, flush=True)

    def line(self, seconds: float) -> str:
        """``desc: 37% (1.2G of 3.3G voxels), 4.1M voxels/s, 8 workers, 8 min left``."""
        rate = self.done / seconds if seconds > 0 else 0.0
        share = self.done / self.total if self.total else 1.0
        parts = [f"{self.desc}: {share:.0%} ({count_text(self.done)} of {count_text(self.total)} voxels)",
                 f"{count_text(rate)} voxels/s"]
        if self.workers is not None:
            parts.append(f"{self.workers} worker(s)")
        if rate > 0 and self.done < self.total:
            parts.append(f"{duration_text((self.total - self.done) / rate)} left")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


ProgressOption = bool | Callable[[Progress], None]


def check_progress(progress: object) -> None:
    """One line for a ``progress`` that is neither True, False (or None) nor a callable."""
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise DensePredError(f"progress = {progress!r} is invalid; expected True (a bar or log lines), False, or a "
                             "function that gets the Progress after every tile")


def shape_text(shape: Sequence[int]) -> str:
    """``(8, 64, 64)`` -> ``"8x64x64"``, as in the profiles' CSV files."""
    return "x".join(str(v) for v in shape)


def count_text(n: float) -> str:
    """``1.2G``: a count with an SI prefix."""
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def duration_text(seconds: float) -> str:
    """``42 s``, ``8.0 min``, ``3.5 h``, ``2.1 days``."""
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
