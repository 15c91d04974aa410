"""The tiles of a one-process run over a volume of many tiles: listed as objects, or lazily.

A run takes its tiles from :meth:`densepred.geometry.TilePlan.all_tiles` (or
``batches_to_run`` on a resume): ranges of tile ids, each tile made when it is read. Before,
every :class:`~densepred.geometry.Tile` of the plan was made up front, in a list, and again
grouped into a list of batches. This measures both over plans of N tiles (1x1x1 output tiles of
a 1x1x1 net, so the plan's arithmetic is all there is): the seconds before the first tile could
be read, the seconds to walk every tile, and the growth of the peak resident set, each in a
fresh process.

    python benchmarks/tile_listing.py                     # 10^5, 10^6 and 10^7 tiles
    python benchmarks/tile_listing.py --tiles 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(kind: str, count: int) -> dict[str, float]:
    from densepred.geometry import TilePlan

    plan = TilePlan.create((count // 1000, 10, 100), (1, 1, 1), (1, 1, 1), mirror=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    if kind == "listed":
        tiles = list(plan.tiles())
        batches = [tiles[i:i + 1] for i in range(len(tiles))]  # as predict_tiles grouped them
    else:
        tiles = plan.batches_to_run({0}, 1)  # a resume: every tile but the first
        batches = ([tile] for tile in tiles)  # as predict_tiles takes them, one at a time
    ready = time.perf_counter() - start
    walked = sum(1 for _ in batches)
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"tiles": walked, "ready_s": ready, "walk_s": seconds, "peak_mib": grown / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="*", default=[10**5, 10**6, 10**7])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # kind, count: measured in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    print("| tiles | kind | ready (s) | walk every tile (s) | peak resident set grown by (MiB) |")
    print("|---|---|---|---|---|")
    for count in args.tiles:
        for kind in ("listed", "lazy"):
            done = subprocess.run([sys.executable, __file__, "--one", kind, str(count)], capture_output=True,
                                  text=True, check=True)
            row = json.loads(done.stdout)
            print(f"| {count:,} | {kind} | {row['ready_s']:.2f} | {row['walk_s']:.2f} | {row['peak_mib']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
