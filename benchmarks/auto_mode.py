"""What ``mode="auto"`` picks without a tile, against each engine it chose between.

For each volume shape, ``predict_dense(net, volume, mirror=True)`` runs once per mode with the
default tiles (the largest that fit the memory limit, balanced over the volume), after one
small warm-up; the row says which engine and tile each run used and its output voxels/s.
The net has random weights (the speed does not depend on them).

    .venv/bin/python benchmarks/auto_mode.py --config examples/neuro3d.toml --shapes 200,512,512
    .venv/bin/python benchmarks/auto_mode.py --config examples/m36.toml --shapes 160,160,160
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

import densepred


class LastPlan(logging.Handler):
    """Keeps the last tile-plan line predict_dense logs (tiles, input tile, engine)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "engine" in message and "tile" in message:
            self.text = message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/neuro3d.toml")
    parser.add_argument("--shapes", default="200,512,512", help="volumes, ';'-separated z,y,x")
    parser.add_argument("--modes", default="auto,mfp,stream")
    parser.add_argument("--memory-limit-gib", type=float, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = densepred.build_net(densepred.load_config(args.config)).eval()
    plan = LastPlan()
    logger = logging.getLogger("densepred")
    logger.addHandler(plan)
    logger.setLevel(logging.INFO)
    limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * 2**30)
    print(f"{args.config}: {torch.get_num_threads()} threads, memory limit "
          f"{'default' if limit is None else f'{args.memory_limit_gib} GiB'}")
    print("| volume | mode | tiles, input tile, engine | seconds | output voxels/s |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    densepred.predict_dense(net, rng.random(net.geometry.fov, dtype=np.float32))  # warm-up
    for text in args.shapes.split(";"):
        shape = tuple(int(v) for v in text.split(","))
        volume = rng.random(shape, dtype=np.float32)
        for mode in args.modes.split(","):
            start = time.perf_counter()
            densepred.predict_dense(net, volume, mirror=True, mode=mode, memory_limit=limit)
            seconds = time.perf_counter() - start
            print(f"| {' x '.join(map(str, shape))} | {mode} | {plan.text} | {seconds:.1f} | "
                  f"{volume.size / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
