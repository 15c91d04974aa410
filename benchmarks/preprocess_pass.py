"""What measuring a bioimage.io model's preprocessing costs: one pass over a zarr volume.

``zero_mean_unit_variance`` and ``scale_range`` (percentiles) over the whole volume, before
the first window (:func:`densepred.running.compute.preprocess.resolve`): seconds, voxels/s, and the
peak resident memory the pass adds (float32 input in 32x128x128 chunks).

    python benchmarks/preprocess_pass.py --shape 128,512,512
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import densepred
from densepred.io import ChannelFirst
from densepred.networks.processing import Step
from densepred.running.compute.preprocess import EXACT_VALUES, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="128,512,512")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    net = densepred.from_torch(torch.nn.Conv3d(1, 2, 3, padding=1).eval(), dims=3, in_channels=1)
    with tempfile.TemporaryDirectory() as tmp:
        raw = zarr.create_array(Path(tmp) / "raw.zarr", shape=shape, chunks=(32, 128, 128), dtype="float32")
        rng = np.random.default_rng(0)
        for z in range(0, shape[0], 32):
            raw[z:z + 32] = rng.normal(100.0, 20.0, (min(32, shape[0] - z), *shape[1:])).astype(np.float32)
        voxels = int(np.prod(shape))
        print(f"volume {args.shape} float32 zarr ({voxels:,} voxels); exact percentiles up to {EXACT_VALUES:,}")
        print("| step | seconds | voxels/s | peak RSS GiB (of the process so far) |")
        print("|---|---|---|---|")
        for step in (Step("zero_mean_unit_variance"), Step("scale_range", {"min_percentile": 1.0,
                                                                           "max_percentile": 99.8})):
            net.preprocessing = (step,)
            start = time.perf_counter()
            resolve(net, ChannelFirst(zarr.open_array(Path(tmp) / "raw.zarr", mode="r"), 1, 3))
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"| {step.name} | {seconds:.1f} | {voxels / seconds:,.0f} | {peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
