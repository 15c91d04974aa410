"""One prediction written to each output format: OME-Zarr (one level), HDF5, TIFF, MRC and NumPy.

The near-free 1x1x1 net of ``pipeline_ceiling.py`` (two classes, where writing weighs the most)
predicts one EM-like uint8 zarr volume into each format, float32 and float16 (the dtypes every
format but zarr keeps; zarr takes uint8 instead of float16, which neuroglancer cannot read),
the formats in turn, each run a fresh process: its wall time and peak resident set. With
``--src``, each run is repeated with another checkout's ``src`` (through ``PYTHONPATH``);
``--modes mfp,stream`` runs each engine (a stream writes its tile in slabs of a few slices).

    python benchmarks/file_outputs.py                                   # 64 x 1024 x 1024, 3 rounds
    python benchmarks/file_outputs.py --formats HDF5 --src /path/to/old/src
    python benchmarks/file_outputs.py --modes mfp,stream --dtypes float32 --src /path/to/old/src
    python benchmarks/file_outputs.py --deflate     # HDF5's chunk compression alone: zlib against ISA-L

``--deflate`` times the compression an HDF5 output's chunks get (shuffled float32, deflate
level 1) on one 128 MiB tile of two-class probabilities from a noisy logit, with the standard
library's zlib and with python-isal's, each the best of 3: MiB/s and the compressed share.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import textured_volume, trivial_net
from tiff_inputs import CHUNKS, run

HERE = Path(__file__).resolve().parent.parent / "src"
OUTPUTS = {"OME-Zarr": "o.zarr", "HDF5": "o.h5:p", "TIFF": "o.tif", "MRC": "o.mrc", "NumPy": "o.npy"}


def deflate_rates() -> None:
    import time
    import zlib

    import numpy as np
    from isal import isal_zlib

    p = 1 / (1 + np.exp(-np.random.default_rng(0).normal(size=(64, 512, 512)).astype(np.float32)))
    tile = np.stack([1 - p, p]).astype(np.float32)
    shuffled = np.ascontiguousarray(tile.view(np.uint8).reshape(-1, 4).T).tobytes()  # HDF5's shuffle filter
    for name, compress in (("zlib", zlib.compress), ("ISA-L", isal_zlib.compress)):
        seconds, size = [], 0
        for _ in range(3):
            start = time.perf_counter()
            size = len(compress(shuffled, 1))
            seconds.append(time.perf_counter() - start)
        rate = len(shuffled) / 2**20 / min(seconds)
        print(f"  {name:6s} {rate:6.0f} MiB/s, compressed to {size / len(shuffled):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,1024,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default=",".join(OUTPUTS), help=f"some of {','.join(OUTPUTS)}")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--src", type=Path, help="another checkout's src folder, run in turn with this one's")
    parser.add_argument("--modes", default="mfp", help="engines, e.g. mfp,stream")
    parser.add_argument("--deflate", action="store_true", help="time HDF5's chunk compression alone")
    args = parser.parse_args()
    if args.deflate:
        deflate_rates()
        return
    shape = tuple(int(n) for n in args.shape.split(","))
    sources = {"": HERE} if args.src is None else {" (this src)": HERE, " (other src)": args.src}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config, source = trivial_net(work), textured_volume(work / "in.zarr", shape)
        print(f"volume {'x'.join(map(str, shape))} uint8, two classes; median seconds (runs), peak GiB")
        for dtype in args.dtypes.split(","):
            results: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for kind in args.formats.split(","):
                    stored = "uint8" if kind == "OME-Zarr" and dtype == "float16" else dtype
                    for mode, (name, src) in itertools.product(args.modes.split(","), sources.items()):
                        runs = results.setdefault(f"{kind} {stored} {mode}{name}", [])
                        runs.append(run(CHUNKS, config, source, work / OUTPUTS[kind], ("--dtype", stored, "--levels",
                                        "1", "--mode", mode), dict(os.environ, PYTHONPATH=str(src))))  # --overwrite
            for name, runs in results.items():
                print(f"  {name:36s} {statistics.median(s for s, _ in runs):6.2f} s "
                      f"({' '.join(f'{s:.2f}' for s, _ in runs)}), peak {max(p for _, p in runs):.2f} GiB")


if __name__ == "__main__":
    main()
