"""A compressed TIFF stack predicted file to file: read by its own strips or tiles (densepred's
way, ``io/tiff_chunks.py``) against decoded whole into memory first (how it was read before).

Writes one EM-like uint8 stack in three layouts (zlib with tifffile's default strips, strips of
64 rows, tiles of 256 x 256) and predicts each with the near-free 1x1x1 net of
``pipeline_ceiling.py`` into OME-Zarr (uint8, one level), where reading weighs the most, in
turn: each run a fresh process, its wall time and peak resident set (``ru_maxrss``) taken.

    python benchmarks/tiff_inputs.py                      # 96 x 2048 x 2048, 3 rounds
    python benchmarks/tiff_inputs.py --shape 768,2048,2048 --rounds 1 --layouts "zlib, default strips"
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import trivial_net

LAYOUTS = {"zlib, default strips": {}, "zlib, strips of 64 rows": {"rowsperstrip": 64},
           "zlib, tiles of 256 x 256": {"tile": (256, 256)}}

# each run reports its peak resident set (VmHWM: ru_maxrss would carry the parent's over exec)
PEAK = """
import atexit, re, sys
atexit.register(lambda: print("peak_kib", re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1],
                              file=sys.stderr))
"""
# the reading before: the whole file decoded into memory when it is opened
WHOLE = PEAK + """
import tifffile
import densepred.io.arrays as arrays
from densepred.io.axes import channel_first

def whole(path, time=None):
    with tifffile.TiffFile(path) as tiff:
        axes = tiff.series[0].axes
    return channel_first(tifffile.imread(path), axes, str(path), time)

arrays._open_tiff = whole
from densepred.interfaces.cli import main
sys.exit(main(sys.argv[1:]))
"""
CHUNKS = PEAK + "from densepred.interfaces.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def pages(shape: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """EM-like texture, page by page: coarse blobs with noise, which compresses as real EM does."""
    rng = np.random.default_rng(0)
    for _ in range(shape[0]):
        coarse = rng.normal(128, 30, (shape[1] // 4, shape[2] // 4)).astype(np.float32).repeat(4, 0).repeat(4, 1)
        yield (coarse + rng.standard_normal(shape[1:], dtype=np.float32) * 12).clip(0, 255).astype(np.uint8)


def write_stack(path: Path, shape: tuple[int, int, int], options: dict) -> None:
    """The stack written page by page (tile by tile for a tiled layout): never whole in memory."""
    tile = options.get("tile")
    segments = pages(shape) if tile is None else (
        page[y:y + tile[0], x:x + tile[1]] for page in pages(shape)
        for y in range(0, shape[1], tile[0]) for x in range(0, shape[2], tile[1]))
    tifffile.imwrite(path, segments, shape=shape, dtype=np.uint8, photometric="minisblack", compression="zlib",
                     **options)


def run(program: str, config: Path, source: Path, output: Path, options: tuple[str, ...] = ("--dtype", "uint8",
        "--levels", "1"), env: dict[str, str] | None = None) -> tuple[float, float]:
    """Seconds and peak resident GiB of one prediction in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", program, "predict", str(config), "--input", str(source), "--output",
                           str(output), "--overwrite", "--quiet", *options], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - start
    peak = re.search(r"peak_kib (\d+)", done.stderr)
    if done.returncode != 0 or peak is None:
        raise SystemExit(f"the prediction of {source} failed: {done.stderr.strip()[-500:]}")
    return seconds, int(peak[1]) / 2**20


def in_turn(sources: dict[str, Path], config: Path, output: Path, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Each source predicted by densepred's own readers ``rounds`` times, the sources in turn."""
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in sources}
    for _ in range(rounds):
        for kind, source in sources.items():
            results[kind].append(run(CHUNKS, config, source, output))
    return results


def volume_options(description: str) -> tuple[tuple[int, ...], int]:
    """``--shape`` and ``--rounds`` of a script that compares ways to read one volume."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="96,2048,2048")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    return tuple(int(n) for n in args.shape.split(",")), args.rounds


def compare(sources: dict[str, Any], config: Path, work: Path, shape: tuple[int, ...], rounds: int) -> None:
    """Print each source's median seconds and peak, its runs in turn with the others'."""
    print(f"volume {'x'.join(map(str, shape))} uint8 ({np.prod(shape) / 2**20:.0f} MiB); seconds and peak resident "
          "GiB per run, in turn")
    print("  " + summary(in_turn(sources, config, work / "o.zarr", rounds)))


def summary(results: dict[str, list[tuple[float, float]]]) -> str:
    """Each way's median seconds, its runs and its largest peak, on one line."""
    return ", ".join(f"{way} {statistics.median(s for s, _ in runs):.2f} s (runs "
                     f"{' '.join(f'{s:.2f}' for s, _ in runs)}; peak {max(p for _, p in runs):.2f} GiB)"
                     for way, runs in results.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="96,2048,2048")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", default=";".join(LAYOUTS), help="some of: " + "; ".join(LAYOUTS))
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config = trivial_net(work)
        print(f"stack {'x'.join(map(str, shape))} uint8 ({np.prod(shape) / 2**20:.0f} MiB decoded); seconds and peak "
              "resident GiB per run, in turn")
        for name in args.layouts.split(";"):
            options = LAYOUTS[name.strip()]
            source = work / "stack.tif"
            write_stack(source, shape, options)
            results: dict[str, list[tuple[float, float]]] = {"whole": [], "chunks": []}
            for _ in range(args.rounds):
                for way, program in (("whole", WHOLE), ("chunks", CHUNKS)):
                    results[way].append(run(program, config, source, work / "o.zarr"))
            print(f"  {name} ({source.stat().st_size / 2**20:.0f} MiB on disk): {summary(results)}")


if __name__ == "__main__":
    main()
