"""How fast zstd encodes a prediction's inner chunks, and how small, at several levels: the
measure behind the outputs' zstd level (``io/ome_zarr.py``: ``ZSTD_LEVEL``).

The prediction is the demo net's membrane probabilities (``densepred demo``, trained here in
about a minute) unless ``--prediction`` names another array (any input spec densepred reads).
Its values are encoded as float32 and as uint8 (``--dtype uint8``'s encoding), in 64^3 chunks
(the outputs' inner chunks; smaller arrays in their whole planes), one thread.

    python benchmarks/output_codec.py
    python benchmarks/output_codec.py --prediction out.zarr:0 --levels 0,1,3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numcodecs import Zstd

from densepred.io import open_array


def chunks_of(values: np.ndarray, side: int = 64) -> list[np.ndarray]:
    """The array's ``side``-cubed chunks (whole where they fit), C-contiguous."""
    shape = values.shape[-3:]
    steps = [min(side, n) for n in shape]
    out = []
    for z in range(0, shape[0] - steps[0] + 1, steps[0]):
        for y in range(0, shape[1] - steps[1] + 1, steps[1]):
            for x in range(0, shape[2] - steps[2] + 1, steps[2]):
                out.append(np.ascontiguousarray(values[..., z:z + steps[0], y:y + steps[1], x:x + steps[2]]))
    return out


def measure(chunks: list[np.ndarray], level: int, repeats: int) -> tuple[float, float]:
    """Encoding MB/s (the fastest of ``repeats``) and the compression ratio at ``level``."""
    codec, size = Zstd(level=level), sum(c.nbytes for c in chunks)
    best, stored = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        stored = sum(len(codec.encode(c)) for c in chunks)
        best = min(best, time.perf_counter() - start)
    return size / best / 1e6, size / stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prediction", help="an array of probabilities in [0, 1] (default: the demo's)")
    parser.add_argument("--levels", default="-1,0,1,3", help="zstd levels (0 is zstd's default, 3)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.prediction
        if spec is None:
            demo = Path(tmp) / "demo"
            subprocess.run([str(Path(sys.executable).with_name("densepred")), "demo", "--out", str(demo)],
                           check=True, capture_output=True)
            spec = f"{demo / 'prediction.h5'}:membrane"
        probabilities = np.asarray(open_array(spec)[...], dtype=np.float32)
    encoded = {"float32": probabilities, "uint8": np.rint(probabilities * 255).astype(np.uint8)}
    print(f"prediction {spec}: shape {list(probabilities.shape)}")
    for dtype, values in encoded.items():
        chunks = chunks_of(values)
        for level in (int(v) for v in args.levels.split(",")):
            rate, ratio = measure(chunks, level, args.repeats)
            print(f"{dtype:8s} zstd level {level:3d}: {rate:6.0f} MB/s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
