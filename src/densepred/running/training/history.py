"""A training run's history: ``history.csv`` (one row per record) and ``history.png``.

The picture is redrawn at most every :data:`DRAW_SECONDS` (:class:`HistoryPlot`), with
matplotlib's object API, never ``pyplot``: the caller's backend (a notebook's inline plots) and
figures stay as they were.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...files import atomic_path, atomic_write_text

log = logging.getLogger("densepred")
DRAW_SECONDS = 30.0  # the picture is at most this old while a run goes on
HISTORY_FIELDS = ("step", "seconds", "train_loss", "val_loss", "val_accuracy", "lr", "skipped_batches")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of ``history.csv``; columns a file from an older version lacks are None. A row
    that is not numbers (a file edited or damaged) is one error naming it."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            rows.append({key: _history_value(key, row.get(key), path, number) for key in HISTORY_FIELDS})
    return rows


def _history_value(key: str, text: str | None, path: Path, line: int) -> Any:
    if text in ("", None):
        return None
    try:
        return int(text) if key in ("step", "skipped_batches") else float(text)
    except ValueError:
        kind = "a whole number" if key in ("step", "skipped_batches") else "a number"
        raise DensePredError(f"{path}, line {line}: {key} {text!r} is not {kind}; repair the file, or move it "
                             "away to resume with a history that starts at LAST's step") from None


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(HISTORY_FIELDS)]
    for row in rows:
        lines.append(",".join("" if row[key] is None else f"{row[key]:.6g}" if isinstance(row[key], float)
                              else str(row[key]) for key in HISTORY_FIELDS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_history(rows: list[dict[str, Any]], path: Path, name: str) -> None:
    """Loss and validation accuracy against the step, written atomically to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(10, 3.6), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(steps, [math.nan if r["train_loss"] is None else r["train_loss"] for r in rows], label="train loss")
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), label="validation loss")
        ax_acc.plot(*zip(*[(r["step"], r["val_accuracy"]) for r in rows if r["val_accuracy"] is not None],
                         strict=True), color="tab:green")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title=f"{name}: loss", yscale="log")
    ax_loss.legend()
    ax_acc.set(xlabel="step", ylabel="accuracy", title="validation accuracy")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


class HistoryPlot:
    """``history.png`` redrawn at a save when :data:`DRAW_SECONDS` have passed since the last
    drawing, at the first save and at the end of a run. A drawing takes 0.4-0.9 s (2-core CPU,
    ``benchmarks/training_history.py``): drawn at every save, the demo's 10 saves cost about 5 s
    of its 1000 steps, and on a GPU a quarter of the run. A drawing that fails for the file
    system is a warning: the picture is an aid, the weights and ``history.csv`` are the record."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.drawn_at = -math.inf

    def update(self, rows: list[dict[str, Any]], final: bool = False) -> None:
        now = time.monotonic()
        if not rows or not (final or now - self.drawn_at >= DRAW_SECONDS):
            return
        self.drawn_at = now
        try:
            plot_history(rows, self.path, self.name)
        except OSError as exc:
            log.warning("could not draw %s: %s", self.path, exc)
