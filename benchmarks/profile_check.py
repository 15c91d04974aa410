"""Is the profiler's recommendation right? Predict with each tile of a profile.csv through
the public path (``create_prediction_net`` + ``predict_dense``) and compare.

For each chosen row, an image whose dense output is exactly one tile is predicted with that
tile and mode (after one warm-up on the same image); the written tile should be at least
as fast as any other, within noise.

    python benchmarks/profile_check.py CONFIG docs/profile/profile.csv [--top 3]
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

import densepred
from densepred.networks.weights import save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="the config profile --write updated")
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=3, help="how many of the fastest other rows to compare")
    args = parser.parse_args()
    cfg = densepred.load_config(args.config)
    written = (tuple(cfg.prediction.tile_shape), cfg.prediction.mode)
    with open(args.csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    rows.sort(key=lambda r: -float(r["voxels_per_s"]))
    chosen = [(tuple(int(v) for v in r["input_shape"].split("x")), r["mode"], float(r["voxels_per_s"]))
              for r in rows]
    others = [c for c in chosen if (c[0], c[1]) != written][:args.top]
    mine = next(c for c in chosen if (c[0], c[1]) == written)
    weights = Path("/tmp") / f"{cfg.name}-profile-check.safetensors"
    torch.manual_seed(0)
    save_weights(densepred.build_net(cfg), weights)
    print("| tile (input) | mode | profile.csv voxels/s | predict_dense voxels/s |")
    print("|---|---|---|---|")
    results = []
    for tile, mode, profiled in [mine, *others]:
        net = densepred.create_prediction_net(cfg, param_file=weights, patch_size=tile, mode=mode)
        image = np.random.default_rng(0).random(tile, dtype=np.float32)
        densepred.predict_dense(net, image)  # warm-up: the net's written tile and mode are the defaults
        start = time.perf_counter()
        densepred.predict_dense(net, image)
        seconds = time.perf_counter() - start
        rate = math.prod(net.geometry.dense_output_shape(tile)) / seconds
        results.append(rate)
        label = " (written)" if (tile, mode) == written else ""
        print(f"| {'x'.join(map(str, tile))}{label} | {mode} | {profiled:,.0f} | {rate:,.0f} |", flush=True)
    print(f"written tile / fastest other: {results[0] / max(results[1:]):.3f}")


if __name__ == "__main__":
    main()
