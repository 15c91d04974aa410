"""The stream engine against the dilated engine on one input tile of m36 (or another config).

Each mode runs in its own child process (so each peak resident memory is its own): a warm-up
on a thin tile, then one timed forward of the whole tile; the matmul peak is measured in the
same process.

    python benchmarks/stream_engine.py --shape 148,180,180 --modes dilated,stream
    python benchmarks/stream_engine.py --shape 404,212,212 --modes stream
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(config: str, mode: str, shape: tuple[int, ...]) -> dict:
    import torch

    import densepred
    from densepred.networks import DenseEngine
    from densepred.running.profiling import matmul_peak

    net = densepred.build_net(densepred.load_config(config)).eval()
    geometry = net.geometry
    engine = DenseEngine(net, mode, torch.device("cpu"))
    x = torch.rand(1, net.config.in_channels, *shape, generator=torch.Generator().manual_seed(0))
    peak = matmul_peak(torch.device("cpu"))
    engine(x[:, :, :geometry.fov[0] + 8])  # warm-up on a thin slab of the tile
    start = time.perf_counter()
    out = engine(x)
    seconds = time.perf_counter() - start
    voxels = out[0, 0].numel()
    return {"mode": mode, "shape": shape, "seconds": seconds, "voxels_per_s": voxels / seconds,
            "fraction_of_peak": voxels / seconds * geometry.flops_per_voxel / peak, "matmul_gflops": peak / 1e9,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "m36.toml"))
    parser.add_argument("--shape", required=True, help="input tile Z,Y,X")
    parser.add_argument("--modes", default="dilated,stream")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    if args.child:
        print(json.dumps(measure(args.config, args.modes, shape)))
        return
    for mode in args.modes.split(","):
        done = subprocess.run([sys.executable, __file__, "--config", args.config, "--shape", args.shape,
                               "--modes", mode, "--child"], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{mode:8s} input {'x'.join(map(str, shape))}: {r['voxels_per_s']:,.0f} output voxels/s, "
              f"{r['fraction_of_peak']:.3f} of the matmul peak ({r['matmul_gflops']:.0f} GFLOP/s), "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
