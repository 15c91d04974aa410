"""TIFF outputs written as ImageJ hyperstacks (classes as channels, z before them in the file)
against the same output written as plain pages, classes first.

A hyperstack's tile is written through a (C, Z, Y, X) view of a memory map stored (Z, C, Y, X),
so each class of a tile lands in other pages than in the plain layout. The script predicts one
EM-like uint8 zarr volume with the near-free 1x1x1 net of ``pipeline_ceiling.py`` (two classes,
where writing weighs the most) into a TIFF, float32 and uint8, with this checkout's ``src`` and
with another (``--src``: the commit before the hyperstacks), in turn, each run a fresh process:
its wall time and peak resident set.

    python benchmarks/tiff_outputs.py --src /path/to/old/src      # 64 x 1024 x 1024, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import textured_volume, trivial_net
from tiff_inputs import CHUNKS, run

HERE = Path(__file__).resolve().parent.parent / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the other checkout's src folder")
    parser.add_argument("--shape", default="64,1024,1024")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config, source = trivial_net(work), textured_volume(work / "in.zarr", shape)
        print(f"volume {'x'.join(map(str, shape))} uint8, two classes into TIFF; median seconds (runs), peak GiB")
        for dtype in ("float32", "uint8"):
            results: dict[str, list[tuple[float, float]]] = {"this src": [], "other src": []}
            for _ in range(args.rounds):
                for way, src in (("this src", HERE), ("other src", args.src)):
                    results[way].append(run(CHUNKS, config, source, work / "o.tif", ("--dtype", dtype),
                                            dict(os.environ, PYTHONPATH=str(src))))
            print(f"  {dtype}: " + ", ".join(
                f"{way} {statistics.median(s for s, _ in runs):.2f} s ({' '.join(f'{s:.2f}' for s, _ in runs)}; "
                f"peak {max(p for _, p in runs):.2f} GiB)" for way, runs in results.items()))


if __name__ == "__main__":
    main()
