"""Peak memory of a stream does not depend on its length.

For each stream length, a random float32 zarr volume of ``length x Y x X`` (the same
cross-section) is predicted with ``densepred predict --mode stream`` and one tile as long as
the volume, in its own process; its peak resident memory (``ru_maxrss`` of the child) and
time are printed. The net is a light one by default (``examples/neuro3d.toml``, random weights).

    python benchmarks/stream_memory.py --lengths 256,2048 --cross-section 128,128 --work /tmp/dp-stream
    python benchmarks/stream_memory.py --config examples/m36.toml --lengths 512 --cross-section 256,256
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import densepred
from densepred.networks.weights import config_last, save_weights

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def prepare(work: Path, example: Path) -> Path:
    config = work / example.name
    shutil.copyfile(example, config)
    cfg = densepred.load_config(config)
    torch.manual_seed(0)
    save_weights(densepred.build_net(cfg), config_last(cfg))  # random weights as its LAST
    return config


def volume(work: Path, shape: tuple[int, ...]) -> Path:
    path = work / f"in-{'x'.join(map(str, shape))}.zarr"
    if not path.exists():
        array = zarr.create_array(path, shape=shape, dtype="float32", chunks=(32, *shape[1:]))
        rng = np.random.default_rng(0)
        for z in range(0, shape[0], 32):
            array[z:z + 32] = rng.random((min(32, shape[0] - z), *shape[1:]), dtype=np.float32)
    return path


def run(config: Path, source: Path, output: Path, tile: str) -> tuple[float, float]:
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(Path(str(output) + ".densepred"), ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([str(BIN / "densepred"), "predict", str(config), "--input", str(source), "--output",
                    str(output), "--mode", "stream", "--tile", tile, "--mirror", "--levels", "1", "--quiet"],
                   check=True)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,2048")
    parser.add_argument("--cross-section", default="128,128")
    parser.add_argument("--work", default="/tmp/dp-stream")
    parser.add_argument("--config", default=str(ROOT / "examples" / "neuro3d.toml"), help="the net (random weights)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = prepare(work, Path(args.config))
    fov = densepred.create_prediction_net(densepred.load_config(config)).geometry.fov
    cross = tuple(int(v) for v in args.cross_section.split(","))
    print(f"{config.stem} (field of view {list(fov)}), cross-section {cross[0]}x{cross[1]}, one mirrored stream tile, "
          f"float32 zarr -> OME-Zarr float32")
    for length in (int(v) for v in args.lengths.split(",")):
        source = volume(work, (length, *cross))
        tile = ",".join(str(n + f - 1) for n, f in zip((length, *cross), fov, strict=True))
        # each length in a fresh interpreter, so ru_maxrss of the children is this run's alone
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import stream_memory as m; "
                f"from pathlib import Path; s, g = m.run(Path({str(config)!r}), Path({str(source)!r}), "
                f"Path({str(work / 'out.zarr')!r}), {tile!r}); print(f'{{s:.1f}} {{g:.3f}}')")
        seconds, gib = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout.split()[-2:]
        voxels = length * cross[0] * cross[1]
        print(f"length {length:5d}: {voxels / 1e6:6.1f} M voxels, {float(seconds):6.1f} s, "
              f"{voxels / float(seconds):,.0f} voxels/s, peak RSS {float(gib):.3f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
