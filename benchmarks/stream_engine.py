"""The stream engine against the dilated engine on one input tile of m36 (or another config).

Each mode runs in its own child process (so each peak resident memory is its own): a warm-up
on a thin tile, then one timed forward of the whole tile; the matmul peak is measured in the
same process.

    python benchmarks/stream_engine.py --shape 148,180,180 --modes dilated,stream
    python benchmarks/stream_engine.py --shape 404,212,212 --modes stream
    python benchmarks/stream_engine.py --shape 596,340,340 --modes stream --device cuda \\
        --dtypes float32,bfloat16,float16 --bias

A dtype other than float32 runs the engine in that precision (weights and activations) and
reports its error against the float32 engine on the same input: max |difference| of the
softmax probabilities and the share of voxels whose argmax differs. ``--bias`` times m36's
largest dilated convolution with its bias against the same convolution without bias and the
bias added after (PyTorch's half-precision dilated conv3d with bias is known to be slow:
pytorch#167420).
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


def measure(config: str, mode: str, shape: tuple[int, ...], device_name: str = "cpu",
            dtype_name: str = "float32") -> dict:
    import torch

    import densepred
    from densepred.networks import DenseEngine
    from densepred.running.profiling import matmul_peak

    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    net = densepred.build_net(densepred.load_config(config)).eval()
    geometry = net.geometry
    engine = DenseEngine(net, mode, device, dtype_name)
    x = torch.rand(1, net.config.in_channels, *shape, generator=torch.Generator().manual_seed(0))
    peak = matmul_peak(device)
    engine(x[:, :, :geometry.fov[0] + 8])  # warm-up on a thin slab of the tile
    _sync(device)
    start = time.perf_counter()
    out = engine(x)
    _sync(device)
    seconds = time.perf_counter() - start
    voxels = out[0, 0].numel()
    result = {"mode": mode, "shape": shape, "seconds": seconds, "voxels_per_s": voxels / seconds,
              "fraction_of_peak": voxels / seconds * geometry.flops_per_voxel / peak, "matmul_gflops": peak / 1e9,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        result["peak_device_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if dtype != torch.float32:
        reference = torch.softmax(DenseEngine(net, mode, device)(x).float(), dim=1)
        probabilities = torch.softmax(out.float(), dim=1)
        result["max_abs_diff"] = float((probabilities - reference).abs().max())
        result["argmax_flips"] = float((probabilities.argmax(1) != reference.argmax(1)).float().mean())
    return result


def bias_timing(device_name: str, dtype_name: str, repeats: int = 5) -> dict:
    """m36's largest layer as a dilated conv3d on a 16-slice slab: with bias, and without it
    plus the bias added after."""
    import torch

    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    x = torch.rand(1, 64, 16 + 16, 96, 96, device=device, dtype=dtype)
    conv = torch.nn.Conv3d(64, 64, 3, dilation=8, bias=True).to(device, dtype)
    timings = {}
    with torch.inference_mode():
        for name, run in (("with bias", lambda: conv(x)),
                          ("bias added after", lambda: torch.nn.functional.conv3d(
                              x, conv.weight, None, dilation=8).add_(conv.bias.view(1, -1, 1, 1, 1)))):
            run()
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            _sync(device)
            timings[name] = (time.perf_counter() - start) / repeats
    return timings


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "m36.toml"))
    parser.add_argument("--shape", required=True, help="input tile Z,Y,X")
    parser.add_argument("--modes", default="dilated,stream")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtypes", default="float32", help="float32, bfloat16, float16 (comma-separated)")
    parser.add_argument("--bias", action="store_true", help="time a dilated conv3d with and without its bias")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    if args.child:
        print(json.dumps(measure(args.config, args.modes, shape, args.device, args.dtypes)))
        return
    if args.bias:
        for dtype in args.dtypes.split(","):
            timings = bias_timing(args.device, dtype)
            print(f"{args.device} {dtype}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in timings.items()))
    for mode in args.modes.split(","):
        for dtype in args.dtypes.split(","):
            done = subprocess.run([sys.executable, __file__, "--config", args.config, "--shape", args.shape,
                                   "--modes", mode, "--device", args.device, "--dtypes", dtype, "--child"],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            extra = "" if "max_abs_diff" not in r else (
                f", against float32: max |diff| {r['max_abs_diff']:.1e}, argmax flips {r['argmax_flips']:.1e}")
            device_memory = f", peak device memory {r['peak_device_gib']:.2f} GiB" if "peak_device_gib" in r else ""
            print(f"{mode:8s} {args.device} {dtype} input {'x'.join(map(str, shape))}: {r['voxels_per_s']:,.0f} "
                  f"output voxels/s, {r['fraction_of_peak']:.3f} of the float32 matmul peak "
                  f"({r['matmul_gflops']:.0f} GFLOP/s), peak RSS {r['peak_rss_gib']:.2f} GiB{device_memory}, "
                  f"{r['seconds']:.1f} s{extra}", flush=True)


if __name__ == "__main__":
    main()
