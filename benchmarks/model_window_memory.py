"""Why `densepred profile --model` measures each window on the CPU in a process of its own: the
growth of the resident set over one window's forwards, measured in one process, depends on the
windows of other shapes measured before it.

Each case runs in a process of its own: the model is built and its run created (as the profile
does), then optionally a window of another shape is computed first (``--after``, with its heap
kept or returned: ``--after-heap``), then the window: malloc's free lists are returned, the
peak resident set (VmHWM) is reset through ``/proc/self/clear_refs``, the window is computed
twice, and VmHWM over the VmRSS before is printed. MONAI is needed (it is in the project's environment).

    python benchmarks/model_window_memory.py                                  # 2D BasicUNet over a stack
    python benchmarks/model_window_memory.py --window 16,560,560 --after 16,480,480
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np
from densepred.io import ChannelFirst
from densepred.running.compute.model_run import ModelRun
from densepred.running.compute.preprocess import Prepared
from densepred.running.jobs.model_plan import sized_model
from densepred.system import large_blocks_returned, proc_values, release_free_memory

kwargs, window, after = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2])), json.loads(sys.argv[3])
limit, after_kept = int(sys.argv[4]), sys.argv[5] == "kept"
fields = {"model": "monai.networks.nets:BasicUNet", "model_kwargs": kwargs, "dims": 2}
net, image, _ = sized_model(fields, None, window, "float32", "profile")
run = ModelRun.create(net, ChannelFirst(image, 1, 2), "exact", window, 0.0, None, None, "cpu", Prepared((), ()),
                      memory_limit=limit)
if after:  # with the heap its own run would have
    with large_blocks_returned(not after_kept):
        run.compute_window(np.random.default_rng(1).random((1, *after), dtype=np.float32))
with large_blocks_returned(not run.heap_kept):
    release_free_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = proc_values()["VmRSS"]
    x = np.random.default_rng(0).random((1, *window), dtype=np.float32)
    for _ in range(2):
        run.compute_window(x)
    print(json.dumps({"growth": proc_values()["VmHWM"] - before, "heap_kept": run.heap_kept}))
"""

KWARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "norm": "batch"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", default="16,560,560", help="slices,y,x of the window measured")
    parser.add_argument("--after", default="16,480,480", help="the window of another shape computed first")
    parser.add_argument("--after-heap", choices=("kept", "returned"), default="kept",
                        help="the first window's heap: kept (as a profile's smaller windows) or returned")
    parser.add_argument("--memory-limit", type=float, default=12.0, help="GiB, as for the profile")
    parser.add_argument("--repeats", type=int, default=2, help="processes per case, interleaved")
    args = parser.parse_args()
    window = [int(v) for v in args.window.split(",")]
    after = [int(v) for v in args.after.split(",")]
    results: dict[str, list[float]] = {"fresh": [], "after": []}
    for _ in range(args.repeats):
        for case, first in (("fresh", None), ("after", after)):
            child = [sys.executable, "-c", CHILD, json.dumps(KWARGS), json.dumps(window), json.dumps(first),
                     str(int(args.memory_limit * 2**30)), args.after_heap]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            report = json.loads(done.stdout.strip().splitlines()[-1])
            results[case].append(report["growth"] / 2**30)
    print(f"BasicUNet 2D, window {args.window} (heap {'kept' if report['heap_kept'] else 'returned'}): resident growth "
          f"over its forwards, GiB")
    print(f"  in a fresh process:            {' '.join(f'{v:.2f}' for v in results['fresh'])}")
    print(f"  after a {args.after} window (heap {args.after_heap}): {' '.join(f'{v:.2f}' for v in results['after'])}")


if __name__ == "__main__":
    main()
