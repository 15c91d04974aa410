"""How long the profiler's measuring process takes to start and to end.

``densepred profile`` measures in a process of its own (``running/profiling/worker.py``), and a
model's profile starts one per window. The process is started, set up (torch imported, the net
built, the matmul peak measured with ``DENSEPRED_PEAK_MATRIX``, 1024 here) and told to end,
``--repeat`` times each way: ending with ``os._exit`` once it has served (densepred since
2026-12-07) and ending through the interpreter's own teardown (before). Medians are printed.

    python benchmarks/profile_worker.py
    python benchmarks/profile_worker.py --repeat 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tomllib

import densepred
from densepred.running.profiling import worker

TORN_DOWN = ("import sys; from multiprocessing.connection import Connection; "
             "from densepred.running.profiling.worker import serve; serve(Connection(int(sys.argv[1])))")
CONFIG = """name = "tiny"
[network]
dims = 3
in_channels = 1
n_classes = 2
layers = [{ filters = 8, kernel = 3 }, { filters = 8, kernel = 3 }]
"""


def start_and_end(cfg, main: str) -> tuple[float, float]:
    worker.WORKER_MAIN = main
    start = time.perf_counter()
    process = worker.Worker(cfg, "cpu")
    started = time.perf_counter()
    process.__exit__(None, None, None)
    return started - start, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("DENSEPRED_PEAK_MATRIX", "1024")
    cfg = densepred.config_from_dict(tomllib.loads(CONFIG))
    ways = {"os._exit once served (now)": worker.WORKER_MAIN, "interpreter teardown (before)": TORN_DOWN}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.repeat):  # interleaved: the machine's drift hits both alike
        for name, command in ways.items():
            times[name].append(start_and_end(cfg, command))
    for name, pairs in times.items():
        print(f"{name:32s}: start {statistics.median(p[0] for p in pairs):.2f} s, "
              f"end {statistics.median(p[1] for p in pairs):.2f} s (median of {len(pairs)})")


if __name__ == "__main__":
    main()
