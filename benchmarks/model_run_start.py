"""What a one-process exact run of a model spends on its windows before and besides computing them.

``densepred predict --model ...`` in one process (``ModelRun.write_exact``) used to list every
exact window of the run, with a map from each window to its shards, before the first window was
read; it now makes the windows as the reading thread asks for them (``ExactOrder``). Each volume
runs in a process of its own, with the windows' computation left out (``forward_each`` only
takes the windows), and prints: the windows and shards of the run, the seconds until the first
window is handed to the pipeline, the seconds to make every window, and the process's peak
memory growth over that. A 3x3x3 convolution, windows of 16x32x32, volumes of 64 x side x side
(zarr in memory, nothing stored).

    python benchmarks/model_run_start.py                  # sides 1024, 4096, 16384
    python benchmarks/model_run_start.py --sides 8192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(side: int) -> dict:
    import torch
    import zarr

    import densepred
    from densepred.io import ChannelFirst
    from densepred.io.done_ids import DoneIds
    from densepred.running.compute.model_run import ModelRun

    net = densepred.from_torch(torch.nn.Conv3d(1, 2, 3, padding=1), dims=3, in_channels=1)
    image = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(64, side, side), chunks=(64, 256, 256),
                              dtype="uint8")
    run = ModelRun.create(net, ChannelFirst(image, 1, 3), "exact", (16, 32, 32), 0.5, None, None, "cpu",
                          memory_limit=None, in_memory=False)
    seen = {}

    def take_windows(self, items, take, **options):
        items = iter(items)
        next(items)
        seen["first"] = time.perf_counter() - start
        seen["windows"] = 1 + sum(1 for _ in items)

    ModelRun.forward_each = take_windows
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    shards = run.write_exact(None, DoneIds(), None, False)
    return {"side": side, "windows": seen["windows"], "shards": shards, "first": seen["first"],
            "all": time.perf_counter() - start,
            "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)  # one volume, in this process
    args = parser.parse_args()
    if args.side is not None:
        print(json.dumps(measure(args.side)))
        return
    print("| volume | windows | shards | to the first window (s) | every window made (s) | peak memory growth (MiB) |")
    print("|---|---|---|---|---|---|")
    for side in args.sides:
        done = subprocess.run([sys.executable, __file__, "--side", str(side)], capture_output=True, text=True,
                              check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| 64x{side}x{side} | {r['windows']:,} | {r['shards']:,} | {r['first']:.2f} | {r['all']:.2f} | "
              f"{r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
