"""How long the ``densepred`` command takes to answer before it computes anything.

Each case runs as a fresh process (``python -m densepred ...``), as a user's shell starts it,
``--repeat`` times; the median wall time is printed. ``--version``, ``--help``, a mistake in
the arguments, ``info`` of a config and a ``predict`` whose input is missing are answered without
loading torch. For comparison, ``python -c "import torch"`` alone.

    python benchmarks/cli_start.py
    python benchmarks/cli_start.py --repeat 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "neuro3d.toml"


def cases(folder: Path) -> dict[str, list[str]]:
    config = CONFIG
    densepred = [sys.executable, "-m", "densepred"]
    return {"densepred --version": [*densepred, "--version"],
            "densepred predict --help": [*densepred, "predict", "--help"],
            "densepred predict --mode fast (a mistake)": [*densepred, "predict", str(config), "--mode", "fast"],
            "densepred info neuro3d.toml": [*densepred, "info", str(config)],
            "densepred predict, input missing": [*densepred, "predict", str(config), "--input", "none.zarr",
                                                 "--output", str(folder / "o.zarr")],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"]}


def seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name, command in cases(Path(folder)).items():
            print(f"{name:45s} {seconds(command, args.repeat):6.2f} s")


if __name__ == "__main__":
    main()
