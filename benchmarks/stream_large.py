"""A volume larger than memory, zarr to zarr, with memory bounded by the tile.

Creates (once) a uint8 zarr volume of 128 x 4096 x 4096 = 2^31 voxels (8 GiB as float32)
and a small 3D network, runs ``densepred predict`` on it in a child process under
``/usr/bin/time -v`` (peak resident memory), then checks sampled sub-volumes of the output
against in-memory ``predict_dense`` on the same input boxes.

    python benchmarks/stream_large.py --work /tmp/dp-large            # everything
    python benchmarks/stream_large.py --work /tmp/dp-large --check    # only the comparison

The output stores class 1 as uint8 (probability x 255, rounded). Sampled tiles of the run,
recomputed in memory with the same tile, must be identical; odd-sized boxes across tile
borders, recomputed with other tiles, may differ by one where float32 sums in another order
land on the other side of a rounding edge (the script reports how often).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import densepred
from densepred.networks.weights import save_weights

SHAPE = (128, 4096, 4096)
CHUNKS = (32, 512, 512)
TILE = "34,263,263"  # MFP-valid; output tiles of 32 x 256 x 256
CONFIG = """name = "large"
save_dir = "run"

[network]
dims = 3
in_channels = 1
n_classes = 2
layers = [
  { filters = 6, kernel = [1, 3, 3], pool = [1, 2, 2] },
  { filters = 6, kernel = 3 },
]
"""


def make_inputs(work: Path) -> tuple[Path, Path]:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "large.toml"
    config.write_text(CONFIG)
    weights = work / "run" / "large-LAST.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        net = densepred.build_net(densepred.load_config(config))
        with torch.no_grad():
            net.blocks[-1].transform.weight.mul_(4.0)
        save_weights(net, weights)
    volume = work / "raw.zarr"
    if not (volume / "zarr.json").exists():
        start = time.monotonic()
        array = zarr.create_array(volume, shape=SHAPE, chunks=CHUNKS, dtype="uint8", overwrite=True)
        rng = np.random.default_rng(0)
        z, y, x = np.ogrid[:CHUNKS[0], :CHUNKS[1], :CHUNKS[2]]
        pattern = (96 + 64 * np.sin(y / 9.0) * np.cos(x / 13.0) + 8 * np.sin(z / 3.0)).astype(np.float32)
        for z0 in range(0, SHAPE[0], CHUNKS[0]):
            for y0 in range(0, SHAPE[1], CHUNKS[1]):
                for x0 in range(0, SHAPE[2], CHUNKS[2]):
                    noise = rng.normal(0, 24, CHUNKS).astype(np.float32)
                    block = np.clip(pattern + noise, 0, 255).astype(np.uint8)
                    array[z0:z0 + CHUNKS[0], y0:y0 + CHUNKS[1], x0:x0 + CHUNKS[2]] = block
        print(f"wrote {volume} ({np.prod(SHAPE) / 1e9:.2f} Gvoxel uint8) in {time.monotonic() - start:.0f} s")
    return config, volume


def run_prediction(config: Path, volume: Path, output: Path) -> None:
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "densepred", "predict", str(config),
               "--input", str(volume), "--output", str(output), "--tile", TILE, "--mode", "mfp",
               "--dtype", "uint8", "--classes", "1", "--overwrite", "--quiet"]
    print("$", " ".join(command[2:]))
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    print(result.stdout.strip())
    if result.returncode != 0:
        print(result.stderr)
        raise SystemExit(result.returncode)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    voxels = np.prod(zarr.open_array(output / "0", mode="r").shape)
    print(f"wall {seconds:.0f} s, {voxels / seconds / 1e6:.2f} Mvoxel/s, "
          f"peak resident memory {peak_kib / 2**20:.2f} GiB (/usr/bin/time -v)")


def check(config: Path, volume: Path, output: Path, samples: int) -> None:
    net = densepred.create_prediction_net(config)
    fov = net.geometry.fov
    tile = tuple(int(v) for v in TILE.split(","))
    out_tile = net.geometry.dense_output_shape(tile)
    raw = zarr.open_array(volume, mode="r")
    stored = zarr.open_array(output / "0", mode="r")
    rng = np.random.default_rng(1)

    def reference(start: list[int], box: tuple[int, ...], **options: object) -> np.ndarray:
        window = raw[tuple(slice(s, s + b + f - 1) for s, b, f in zip(start, box, fov, strict=True))]
        return np.rint(densepred.predict_dense(net, window, **options)[1] * 255).astype(np.uint8)

    def stored_box(start: list[int], box: tuple[int, ...]) -> np.ndarray:
        return stored[(0, *(slice(s, s + b) for s, b in zip(start, box, strict=True)))]

    # the run's own tiles (grid positions before the last): the same computation, so the same bytes
    grid = [n // t for n, t in zip(stored.shape[1:], out_tile, strict=True)]
    equal = 0
    for _ in range(samples):
        start = [int(rng.integers(0, g)) * t for g, t in zip(grid, out_tile, strict=True)]
        equal += np.array_equal(stored_box(start, out_tile), reference(start, out_tile, tile_shape=tile, mode="mfp"))
    print(f"{samples} sampled tiles of {out_tile}, recomputed in memory with the same tile: {equal} identical")
    # odd boxes across tile borders, tiled differently: float32 sums in another order, so a value
    # on a rounding edge may move by one
    box = (9, 150, 170)
    exact = total = worst = 0
    for _ in range(samples):
        start = [int(rng.integers(0, n - b + 1)) for n, b in zip(stored.shape[1:], box, strict=True)]
        difference = np.abs(stored_box(start, box).astype(np.int16)
                            - reference(start, box, mode="dilated").astype(np.int16))
        worst = max(worst, int(difference.max()))
        exact += int((difference == 0).sum())
        total += difference.size
    print(f"{samples} sampled boxes of {box} across tile borders, dilated, other tiles: "
          f"{exact / total:.6f} of voxels identical, largest difference {worst} (of 255)")
    if equal != samples or worst > 1:
        raise SystemExit("the streamed output differs from the in-memory prediction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/densepred-large"))
    parser.add_argument("--check", action="store_true", help="only compare an existing output")
    parser.add_argument("--samples", type=int, default=12)
    args = parser.parse_args()
    config, volume = make_inputs(args.work)
    output = args.work / "pred.zarr"
    if not args.check:
        run_prediction(config, volume, output)
    check(config, volume, output, args.samples)


if __name__ == "__main__":
    main()
