"""What a cluster block of a model's exact run spends finding its windows.

Each block task of ``densepred predict --model ... --workers N`` (``ModelRun.write_in``) used to
list every exact window of the whole run and keep those meeting its box; it now makes only the
windows near its box (``ModelRun.windows_in``). Printed for each volume: the windows of the run,
the seconds to list them all (what every block paid before) and a block's own windows and
milliseconds (now). A 3x3x3 convolution, windows of 16x32x32, volumes of 64 x side x side
(zarr, nothing stored: no window is computed).

    python benchmarks/model_block_windows.py                  # sides 2048, 8192, 16384
    python benchmarks/model_block_windows.py --sides 4096
"""

from __future__ import annotations

import argparse
import time

import torch
import zarr

import densepred
from densepred.io import ChannelFirst
from densepred.running.compute.model_run import ModelRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 8192, 16384])
    args = parser.parse_args()
    net = densepred.from_torch(torch.nn.Conv3d(1, 2, 3, padding=1), dims=3, in_channels=1)
    print("| volume | windows | all listed (s; before: each block) | a block's windows | found in (ms, now) |")
    print("|---|---|---|---|---|")
    for side in args.sides:
        image = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(64, side, side), chunks=(64, 256, 256),
                                  dtype="uint8")
        run = ModelRun.create(net, ChannelFirst(image, 1, 3), "exact", (16, 32, 32), 0.5, None, None, "cpu",
                              memory_limit=None, in_memory=False)
        start = time.perf_counter()
        every = run.exact_windows()
        listed = time.perf_counter() - start
        box = next(iter(run.written.shards.boxes()))[1]
        start = time.perf_counter()
        near = run.windows_in(box)
        found = time.perf_counter() - start
        print(f"| 64x{side}x{side} | {len(every):,} | {listed:.2f} | {len(near)} | {found * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    main()
