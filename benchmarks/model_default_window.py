"""A model's default window end to end: ``densepred predict --model`` of a uint8 zarr stack with
the window densepred chooses, beside runs with windows given (``--tile``, e.g. the largest
window the memory limit holds, which was the default before it kept its heap).

Each run is its own process (start-up included); runs are interleaved ``--repeats`` times.
Printed per run: the window (from the run record), wall seconds and the peak resident set
(the child's ``ru_maxrss``). MONAI is needed (it is in the project's environment); the weights
are the model's random ones (the time does not depend on them).

    python benchmarks/model_default_window.py --shape 16,1024,1024 --memory-limit 6GiB --tiles 16,464,464
    python benchmarks/model_default_window.py --shape 16,2048,2048 --memory-limit 12GiB --tiles 16,720,720
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

KWARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "norm": "batch"}


def stack(path: Path, shape: tuple[int, ...]) -> Path:
    """A random uint8 stack in 2D chunks of up to 512 x 512."""
    array = zarr.create_array(path, shape=shape, chunks=(1, *(min(512, n) for n in shape[1:])), dtype="uint8")
    rng = np.random.default_rng(0)
    for z in range(shape[0]):
        array[z] = rng.integers(0, 255, shape[1:], dtype=np.uint8)
    return path


def run(source: Path, output: Path, limit: str, tile: str | None) -> tuple[list[int], float, float]:
    """The window, wall seconds and peak RSS (GiB) of one ``densepred predict`` process."""
    command = [sys.executable, "-m", "densepred", "predict", "--model", "monai.networks.nets:BasicUNet", "--dims",
               "2", "--model-kwargs", json.dumps(KWARGS), "--activation", "softmax", "--input", str(source),
               "--output", str(output), "--memory-limit", limit, "--dtype", "uint8", "--quiet", "--overwrite"]
    command += ["--tile", tile] if tile else []
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"densepred predict failed: {command}")
    record = json.loads((output.parent / f"{output.name}.densepred" / "run.json").read_text())
    return record["tiles"]["window"], wall, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="16,1024,1024", help="the stack, z,y,x")
    parser.add_argument("--memory-limit", default="6GiB")
    parser.add_argument("--tiles", default="", help="windows given besides the default, separated by spaces")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for the volumes (default: a temporary one)")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    choices = [None, *args.tiles.split()]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        source = stack(Path(tmp) / "stack.zarr", shape)
        for _ in range(args.repeats):
            for tile in choices:
                window, wall, peak = run(source, Path(tmp) / "out.zarr", args.memory_limit, tile)
                print(f"{'default' if tile is None else '--tile ' + tile}: window {window}, {wall:.1f} s, "
                      f"peak RSS {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
