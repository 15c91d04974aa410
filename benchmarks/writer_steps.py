"""A writer's per-voxel steps on two cores: a tile's probabilities checked for non-finite values
and encoded (``Sink.write`` before the output's own write), whole at once or block by block.

Each writer thread encodes tiles of the near-free net's default plan (two classes over a
128 x 128 x 256 box, float32 probabilities) to uint8, one thread alone and then two at once on
their own tiles, as the pipeline's two writers do. A whole tile at once streams 32 MiB of
floats through memory several times, which two cores share; blocks of ``BLOCK_VALUES`` keep
each block's temporaries in a core's cache (``running/compute/sink.py``).

    python benchmarks/writer_steps.py
    python benchmarks/writer_steps.py --box 64,256,256 --classes 3 --dtype float16
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from densepred.io.encoding import Encoding
from densepred.running.compute import sink


class _Discard:
    def write_box(self, box, values, labels):  # the output's own write is not measured here
        pass


def per_tile(block_values: int, tiles: list[np.ndarray], encoding: Encoding, repeats: int) -> float:
    """Seconds per tile of the slowest of ``len(tiles)`` threads writing at once (fastest of 5)."""
    sink.BLOCK_VALUES = block_values
    box = tuple(slice(0, n) for n in tiles[0].shape[1:])
    best = float("inf")
    for _ in range(5):
        times: list[float] = []

        def write(values: np.ndarray, times: list[float]) -> None:
            target = sink.Sink(_Discard(), encoding, sink.NonFinite(shift=(0,) * len(box)))
            start = time.perf_counter()
            for _ in range(repeats):
                target.write(box, values)
            times.append(time.perf_counter() - start)

        threads = [threading.Thread(target=write, args=(values, times)) for values in tiles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        best = min(best, max(times) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", default="128,128,256", help="a tile's owned box, z,y,x")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--dtype", default="uint8", help="the output's dtype (--dtype of densepred predict)")
    parser.add_argument("--repeats", type=int, default=10, help="tiles per thread and measurement")
    args = parser.parse_args()
    box = tuple(int(n) for n in args.box.split(","))
    rng = np.random.default_rng(0)
    tiles = [rng.random((args.classes, *box), dtype=np.float32) for _ in range(2)]
    encoding = Encoding(args.classes, args.dtype)
    default = sink.BLOCK_VALUES
    print(f"box {list(box)}, {args.classes} classes, float32 -> {args.dtype}; ms per tile per thread")
    for name, block in (("whole tile at once", tiles[0].size), (f"blocks of {default} values", default)):
        one, two = (per_tile(block, tiles[:n], encoding, args.repeats) for n in (1, 2))
        print(f"  {name}: 1 thread {one * 1e3:.1f}, 2 threads at once {two * 1e3:.1f} ({two / one:.2f}x slower)")


if __name__ == "__main__":
    main()
