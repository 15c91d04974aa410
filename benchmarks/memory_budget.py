"""Measured peak memory of `densepred predict` against its estimate and its --memory-limit.

Each case writes (once) a uint8 zarr input and a config with random weights into --work, runs
`densepred predict` without --tile in a child process under `/usr/bin/time -v`, and reports
the peak resident set, the limit, and the estimate the tile was chosen by (printed by the
CLI). Cases:

    light3d   a one-layer 3D net (8 filters), the light case where buffers dominate
    light2d   a 2D net over a stack of slices
    m36       the ZNNi benchmark net (heavy: activations dominate)
    neuro3d   the example 3D net of examples/neuro3d.toml (streams under a tight limit)
    big       the 2-gigavoxel volume 1 x 512 x 2048 x 2048 (C, Z, Y, X) with the one-layer net

    python benchmarks/memory_budget.py --work /tmp/dp-mem --cases light3d,light2d,m36 --limits 1G,3G
    python benchmarks/memory_budget.py --work /tmp/dp-mem --cases big --limits 2G,default --levels 1
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import densepred
from densepred.networks.weights import save_weights

ROOT = Path(__file__).resolve().parent.parent
ONE_LAYER = """name = "{name}"
save_dir = "run"

[network]
dims = {dims}
in_channels = 1
n_classes = 2
layers = [{{ filters = 8, kernel = 3 }}]
"""
CASES = {  # name: (config text, input shape, input chunks)
    "light3d": (ONE_LAYER.format(name="light3d", dims=3), (96, 768, 768), (32, 256, 256)),
    "light2d": (ONE_LAYER.format(name="light2d", dims=2), (64, 1024, 1024), (8, 512, 512)),
    "m36": ((ROOT / "examples" / "m36.toml").read_text(), (160, 512, 512), (32, 256, 256)),
    "neuro3d": ((ROOT / "examples" / "neuro3d.toml").read_text(), (128, 384, 384), (32, 128, 128)),
    "big": (ONE_LAYER.format(name="big", dims=3), (1, 512, 2048, 2048), (1, 32, 512, 512)),
}


def prepare(work: Path, case: str, shape_override: tuple[int, ...] | None = None) -> tuple[Path, Path]:
    text, shape, chunks = CASES[case]
    shape = shape_override or shape
    folder = work / (case if shape_override is None else f"{case}-{'x'.join(map(str, shape))}")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "net.toml"
    config.write_text(text if "save_dir" in text else f'save_dir = "run"\n{text}')
    cfg = densepred.load_config(config)
    weights = folder / "run" / f"{cfg.name}-LAST.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        save_weights(densepred.build_net(cfg), weights)
    volume = folder / "in.zarr"
    if not volume.exists():
        array = zarr.create_array(volume, shape=shape, chunks=chunks, dtype="uint8")
        rng = np.random.default_rng(0)
        axis = len(shape) - 3  # z: after the channel axis when there is one
        for z in range(0, shape[axis], chunks[axis]):
            depth = min(chunks[axis], shape[axis] - z)
            block = (slice(None),) * axis + (slice(z, z + depth),)
            array[block] = rng.integers(0, 256, size=(*shape[:axis], depth, *shape[axis + 1:]), dtype=np.uint8)
    return config, volume


def run(config: Path, volume: Path, output: Path, limit: str, extra: list[str]) -> dict[str, float]:
    command = ["/usr/bin/time", "-v", str(Path(sys.executable).parent / "densepred"), "predict", str(config),
               "--input", str(volume), "--output", str(output), "--overwrite", "--quiet", *extra]
    if limit != "default":
        command += ["--memory-limit", limit]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) * 1024
    estimate = float(re.search(r"estimated peak memory ([0-9.]+) GiB", done.stdout).group(1))
    tile = re.search(r"tile (\[[0-9, ]+\])", done.stdout).group(1)
    voxels = int(np.prod([int(v) for v in re.search(r"shape \[([0-9, ]+)\]", done.stdout).group(1).split(",")][-3:]))
    return {"peak_gib": peak / 2**30, "estimate_gib": estimate, "seconds": seconds, "tile": tile,
            "voxels_per_s": voxels / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cases", default="light3d,light2d,m36")
    parser.add_argument("--limits", default="1G,default", help="--memory-limit values ('default': none given)")
    parser.add_argument("--levels", default=None, help="--levels for the OME-Zarr output (default: the pyramid)")
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--classes", default="1", help="--classes for the output ('all': every class)")
    parser.add_argument("--mode", help="--mode (default: the config's)")
    parser.add_argument("--shape", help="input shape Z,Y,X instead of the case's")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case and limit (peaks vary a little)")
    parser.add_argument("--roi", help="predict only this region, Z0:Z1,Y0:Y1,X0:X1 (the tile is chosen as for it)")
    args = parser.parse_args()
    extra = ["--dtype", args.dtype] + ([] if args.classes == "all" else ["--classes", args.classes])
    extra += ["--levels", args.levels] if args.levels else []
    extra += ["--roi", args.roi] if args.roi else []
    extra += ["--mode", args.mode] if args.mode else []
    print(f"{'case':8s} {'limit':>8s} {'peak GiB':>9s} {'estimate':>9s} {'peak/est':>9s} {'seconds':>8s} "
          f"{'Mvox/s':>7s}  tile")
    for case in args.cases.split(","):
        config, volume = prepare(args.work, case, tuple(int(v) for v in args.shape.split(",")) if args.shape else None)
        for limit in [limit for limit in args.limits.split(",") for _ in range(args.repeats)]:
            r = run(config, volume, volume.parent / "out.zarr", limit, extra)
            print(f"{case:8s} {limit:>8s} {r['peak_gib']:9.2f} {r['estimate_gib']:9.2f} "
                  f"{r['peak_gib'] / r['estimate_gib']:9.2f} {r['seconds']:8.1f} {r['voxels_per_s'] / 1e6:7.2f}  "
                  f"{r['tile']}", flush=True)


if __name__ == "__main__":
    main()
