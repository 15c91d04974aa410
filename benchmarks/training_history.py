"""What drawing ``history.png`` costs a training run.

The demo's network (``densepred demo``'s config and data) is trained for ``--steps`` steps,
saving LAST every ``--every`` steps, in two ways: the picture drawn at every save (densepred
before 2026-12-07) and drawn as densepred draws it now (at the first save, then when
``DRAW_SECONDS`` have passed, and at the end). For each run: the wall time, the drawings and the
seconds the training thread spent drawing. Each run starts afresh in its own folder; the runs
of the two ways alternate, ``--repeat`` of each.

    python benchmarks/training_history.py
    python benchmarks/training_history.py --steps 1000 --every 100 --repeat 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import tomlkit

import densepred
from densepred.interfaces.demo import write_example
from densepred.running.training import history, loop


class DrawnAtEverySave(history.HistoryPlot):
    def update(self, rows, final=False):
        history.plot_history(rows, self.path, self.name)


def config_saving_every(folder: Path, steps: int, every: int) -> Path:
    config = write_example(folder, steps=steps)
    document = tomlkit.parse(config.read_text())
    document["training"]["save_every"] = every
    document["training"]["validate_every"] = every
    config.write_text(tomlkit.dumps(document))
    return config


def trained(folder: Path, steps: int, every: int, plot: type) -> tuple[float, int, float]:
    """Wall seconds of the run, its drawings and their seconds."""
    config = config_saving_every(folder, steps, every)
    drawings: list[float] = []
    draw = history.plot_history

    def timed(rows, path, name):
        start = time.perf_counter()
        draw(rows, path, name)
        drawings.append(time.perf_counter() - start)

    history.plot_history, loop.HistoryPlot = timed, plot
    try:
        start = time.perf_counter()
        densepred.train(config, progress=False)
        return time.perf_counter() - start, len(drawings), sum(drawings)
    finally:
        history.plot_history, loop.HistoryPlot = draw, history.HistoryPlot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=30, help="save (and validate) every this many steps")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    ways = {"at every save": DrawnAtEverySave, "now": history.HistoryPlot}
    runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeat):
            for name, plot in ways.items():
                folder = Path(scratch) / f"{len(runs[name])}{plot.__name__}"
                folder.mkdir()
                runs[name].append(trained(folder, args.steps, args.every, plot))
    print(f"{args.steps} steps, LAST saved every {args.every}; DRAW_SECONDS = {history.DRAW_SECONDS:g}")
    for name, rows in runs.items():
        wall = statistics.median(r[0] for r in rows)
        print(f"drawn {name:14s}: run {wall:6.1f} s (median; runs " + ", ".join(f"{r[0]:.1f}" for r in rows)
              + f"), drawings {rows[0][1]}, drawing " + ", ".join(f"{r[2]:.2f}" for r in rows) + " s")


if __name__ == "__main__":
    main()
