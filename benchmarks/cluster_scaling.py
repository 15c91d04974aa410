"""Scaling out: the same m36 job zarr -> OME-Zarr on a local Dask cluster of 1 and 2 workers.

Each worker runs one torch thread (``--threads-per-worker 1``), so on a 2-core machine two
workers can at best double the rate of one. The in-process run (torch on all cores) is shown
beside them. Every run starts from nothing (cluster start-up and net loading included), and
the outputs are compared: the two cluster runs byte for byte, the in-process run within 1e-5.

    python benchmarks/cluster_scaling.py [--shape 32,64,64] [--tile 116]
"""

from __future__ import annotations

import argparse
import os
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


def run(config: Path, work: Path, name: str, tile: list[int], **cluster) -> tuple[float, np.ndarray]:
    output = work / f"{name}.zarr"
    job = PredictJob(config=config, input=str(work / "raw.zarr"), output=str(output), tile=tile, mode="mfp",
                     progress=False, levels=1, **cluster)
    start = time.perf_counter()
    result = predict_to_file(job)
    seconds = time.perf_counter() - start
    return seconds, np.asarray(zarr.open_group(result.output.path, mode="r")["0"][:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="32,64,64", help="output shape in voxels (z,y,x)")
    parser.add_argument("--tile", type=int, default=116, help="input tile side (MFP-valid)")
    args = parser.parse_args()
    out_shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "m36.toml"
        config.write_text('save_dir = "run"\n' + (EXAMPLES / "m36.toml").read_text())
        torch.manual_seed(0)
        net = densepred.build_net(densepred.load_config(config))
        save_weights(net, work / "run" / "m36-LAST.safetensors")
        shape = tuple(o + f - 1 for o, f in zip(out_shape, net.geometry.fov, strict=True))
        raw = zarr.create_array(work / "raw.zarr", shape=shape, chunks=(64, 64, 64), dtype="float32")
        raw[:] = np.random.default_rng(0).random(shape, dtype=np.float32)
        tile = [args.tile] * 3
        voxels = int(np.prod(out_shape))
        print(f"m36, output {args.shape} ({voxels:,} voxels), input tile {args.tile}^3, {os.cpu_count()} cores")
        runs, times = {}, {}
        for name, cluster in (("in-process", {}), ("workers-1", {"workers": 1, "threads_per_worker": 1}),
                              ("workers-2", {"workers": 2, "threads_per_worker": 1})):
            seconds, runs[name] = run(config, work, name, tile, **cluster)
            times[name] = seconds
            print(f"{name:>10}: {seconds:6.1f} s, {voxels / seconds:8,.0f} output voxels/s")
        one, two = runs["workers-1"], runs["workers-2"]
        print(f"workers 2 / workers 1 speed-up: {times['workers-1'] / times['workers-2']:.2f}x")
        print(f"byte-identical (workers 1, workers 2): {one.tobytes() == two.tobytes()}")
        print(f"max |cluster - in-process|: {np.abs(two - runs['in-process']).max():.2e}")


if __name__ == "__main__":
    main()
