"""Peak memory of `densepred predict --model` from zarr to zarr, at two volume sizes (8x apart).

A MONAI net with eval batch norm, each run a `densepred predict` process of its own (peak RSS
from the kernel, ``RUSAGE_CHILDREN`` of a fresh parent per run). A tiler that keeps
whole-volume accumulators in RAM grows with the volume; densepred must not.

MONAI is needed for this benchmark only: ``.venv/bin/pip install monai``.

    python benchmarks/foreign_memory.py --modes blend --sizes 64,256,256 128,512,512
    python benchmarks/foreign_memory.py --modes exact --net UNet --sizes 64,256,256 128,512,512
    python benchmarks/foreign_memory.py --modes exact --net UNet --tile default --memory-limit 2G

``--tile default`` gives no window: an exact run then takes the largest the memory limit
(``--memory-limit``, else half the available memory) holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

NETS = {
    # MONAI's BasicUNet: four poolings, a context of 107 voxels per side
    "BasicUNet": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "norm": "batch"},
    # MONAI's UNet with two strided levels and batch norm: a small context
    "UNet": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [16, 32, 64], "strides": [2, 2],
             "norm": "batch", "num_res_units": 0},
}


def save_model(path: Path, net: str) -> None:
    import torch
    from monai.networks import nets
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = getattr(nets, net)(**NETS[net])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def run(work: Path, shape: str, mode: str, tile: str, net: str, limit: str | None) -> tuple[float, float]:
    out = work / f"{mode}-{shape.replace(',', 'x')}.zarr"
    command = [str(Path(sys.executable).parent / "densepred"), "predict", "--model", f"monai.networks.nets:{net}",
               "--model-kwargs", json.dumps(NETS[net]), "--weights", str(work / "unet.safetensors"),
               "--input", str(work / f"raw-{shape}.zarr"), "--output", str(out), "--mode", mode,
               "--overlap", "0.5", "--levels", "1", "--quiet", "--overwrite"]
    command += [] if tile == "default" else ["--tile", tile]
    command += [] if limit is None else ["--memory-limit", limit]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64,256,256", "128,512,512"])
    parser.add_argument("--modes", default="blend")
    parser.add_argument("--tile", default="64,128,128", help="the window, or 'default'")
    parser.add_argument("--memory-limit", help="passed to densepred predict")
    parser.add_argument("--net", default="BasicUNet", choices=sorted(NETS))
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one run in a fresh process, so the children's peak is this run's
        shape, mode = args.one[1].split(":")
        seconds, peak = run(Path(args.one[0]), shape, mode, args.tile, args.net, args.memory_limit)
        print(json.dumps({"seconds": seconds, "peak_gib": peak}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_model(work / "unet.safetensors", args.net)
        for shape in args.sizes:
            dims = tuple(int(v) for v in shape.split(","))
            raw = zarr.create_array(work / f"raw-{shape}.zarr", shape=dims, chunks=(32, 128, 128), dtype="float32")
            raw[:] = np.random.default_rng(0).random(dims, dtype=np.float32)
        print(f"MONAI {args.net}, window {args.tile}, memory limit {args.memory_limit or 'default'}")
        print("| mode | volume | voxels | seconds | output voxels/s | peak RSS GiB |")
        print("|---|---|---|---|---|---|")
        for mode in args.modes.split(","):
            for shape in args.sizes:
                limit = [] if args.memory_limit is None else ["--memory-limit", args.memory_limit]
                child = subprocess.run([sys.executable, __file__, "--tile", args.tile, "--net", args.net, *limit,
                                        "--one", str(work), f"{shape}:{mode}"], capture_output=True, text=True,
                                       check=False)
                if child.returncode:
                    raise SystemExit(child.stderr.strip()[-3000:])
                info = json.loads(child.stdout.strip().splitlines()[-1])
                voxels = int(np.prod([int(v) for v in shape.split(",")]))
                print(f"| {mode} | {shape} | {voxels:,} | {info['seconds']:.1f} | {voxels / info['seconds']:,.0f} | "
                      f"{info['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
