"""Is I/O hidden behind compute? m36 from a zarr file to a zarr file against in-memory predict_dense.

Both runs use the same tiles (output tiles of 32^3 on a 64^3 output, 8 tiles) on the same
random input; the in-memory run reads a NumPy array and fills a NumPy array, the file run
is ``densepred predict`` reading zarr and writing OME-Zarr through the prefetching reader and
the background writer.

    python benchmarks/stream_throughput.py [--side 64] [--tile 116]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import densepred
from densepred.networks.weights import save_weights
from densepred.running.jobs import PredictJob, predict_to_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=64, help="output side in voxels")
    parser.add_argument("--tile", type=int, default=116, help="input tile side (MFP-valid)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "m36.toml"
        config.write_text('save_dir = "run"\n' + (EXAMPLES / "m36.toml").read_text())
        torch.manual_seed(0)
        net = densepred.build_net(densepred.load_config(config))
        save_weights(net, work / "run" / "m36-LAST.safetensors")
        net = densepred.create_prediction_net(config)
        shape = tuple(args.side + f - 1 for f in net.geometry.fov)
        volume = np.random.default_rng(0).random(shape, dtype=np.float32)
        raw = zarr.create_array(work / "raw.zarr", shape=shape, chunks=(64, 64, 64), dtype="float32")
        raw[:] = volume
        tile = [args.tile] * 3
        voxels = args.side ** 3

        densepred.predict_dense(net, volume[:args.tile, :args.tile, :args.tile], tile_shape=tile, mode="mfp")  # warm-up
        start = time.perf_counter()
        expected = densepred.predict_dense(net, volume, tile_shape=tile, mode="mfp")
        in_memory = time.perf_counter() - start
        print(f"in memory (NumPy -> NumPy): {in_memory:.1f} s, {voxels / in_memory:,.0f} voxels/s")

        job = PredictJob(config=config, input=str(work / "raw.zarr"), output=str(work / "out.zarr"), tile=tile,
                         mode="mfp", progress=False)
        start = time.perf_counter()
        predict_to_file(job)
        streamed = time.perf_counter() - start
        print(f"zarr -> zarr (densepred predict): {streamed:.1f} s, {voxels / streamed:,.0f} voxels/s")
        print(f"file throughput / in-memory throughput: {in_memory / streamed:.3f}")
        same = np.array_equal(zarr.open_array(work / "out.zarr" / "0", mode="r")[...], expected)
        print(f"outputs identical: {same}")


if __name__ == "__main__":
    main()
