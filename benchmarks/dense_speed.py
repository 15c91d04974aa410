"""Dense prediction speed per engine: output voxels/s and useful FLOP/s against the matmul peak.

For each network and output tile, one input tile (output + FOV - 1) goes through each
engine; the time is the median of the repeats after a warm-up (a single run when one run
already takes longer than ``--long``). Useful work is ``W * voxels`` with ``W`` the FLOPs per
dense output voxel (DESIGN §3); the peak is the best float32 matmul measured in the same
process, so the fraction means the same on any machine.

    python benchmarks/dense_speed.py                         # m36 at 24^3 and 64^3, N4 at 128^2 and 512^2
    python benchmarks/dense_speed.py --net m36 --tile 24 --modes mfp,dilated
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import densepred
from densepred.networks.engines import DenseEngine
from densepred.running.profiling import matmul_peak

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALL_MODES = ["mfp", "dilated", "naive"]
# shift-and-stitch on m36 at 64^3 would take about half an hour here; it runs on the small tiles
DEFAULT_RUNS = [("m36", 24, ALL_MODES), ("m36", 64, ALL_MODES[:2]), ("n4", 128, ALL_MODES),
                ("n4", 512, ALL_MODES[:2])]


def time_engine(engine: DenseEngine, x: torch.Tensor, repeats: int, long: float) -> float:
    """Median seconds of one forward; a single timed run when that run exceeds ``long`` s."""
    first = _timed(engine, x)
    if first > long:
        return first
    return statistics.median(_timed(engine, x) for _ in range(repeats))


def _timed(engine: DenseEngine, x: torch.Tensor) -> float:
    _sync(engine.device)
    start = time.perf_counter()
    engine(x)
    _sync(engine.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(net_name: str, output_side: int, modes: list[str], device: torch.device, peak: float,
        repeats: int, long: float) -> list[dict]:
    cfg = densepred.load_config(EXAMPLES / f"{net_name}.toml")
    torch.manual_seed(0)
    net = densepred.build_net(cfg).eval()
    geometry = net.geometry
    output = (output_side,) * geometry.ndim
    tile = geometry.input_shape_for(output)
    x = torch.rand(1, cfg.network.in_channels, *tile)
    voxels = math.prod(output)
    rows = []
    for mode in modes:
        engine = DenseEngine(net, mode, device)
        seconds = time_engine(engine, x, repeats, long)
        useful = geometry.flops_per_voxel * voxels / seconds
        rows.append({
            "net": net_name, "mode": mode, "input": tile, "output": output, "seconds": seconds,
            "voxels_per_s": voxels / seconds, "useful_gflops": useful / 1e9,
            "fraction_of_peak": useful / peak,
            "computed_gflops": geometry.flops(tile, mode) / seconds / 1e9,
        })
        print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    shape = "x".join(map(str, r["output"]))
    return (f"| {r['net']} | {shape} | {r['mode']} | {r['seconds']:.3f} | {r['voxels_per_s']:,.0f} | "
            f"{r['useful_gflops']:.2f} | {r['fraction_of_peak']:.3f} | {r['computed_gflops']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=["m36", "m76", "n4", "neuro3d"], help="one network (default: m36 and n4)")
    parser.add_argument("--tile", type=int, nargs="+", help="output tile side(s) in voxels")
    parser.add_argument("--modes", help="comma-separated engines (default: mfp,dilated,naive where affordable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=float, default=20.0, help="seconds above which one run suffices")
    args = parser.parse_args()
    device = torch.device(args.device)
    chosen = args.modes.split(",") if args.modes else None
    if args.net is None:
        runs = [(net, side, chosen or modes) for net, side, modes in DEFAULT_RUNS]
    else:
        runs = [(args.net, side, chosen or ALL_MODES) for side in (args.tile or [24])]

    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak (float32, 4096^2): {peak / 1e9:.1f} GFLOP/s")
    print()
    print("| net | output tile | mode | s/tile | output voxels/s | useful GFLOP/s | of matmul peak "
          "| computed GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for net_name, side, modes in runs:
        results += run(net_name, side, modes, device, peak, args.repeats, args.long)
    print()
    for net_name, side, _ in runs:
        by_mode = {r["mode"]: r for r in results if r["net"] == net_name and r["output"][0] == side}
        if "naive" in by_mode:
            for mode in ("mfp", "dilated"):
                if mode in by_mode:
                    ratio = by_mode[mode]["voxels_per_s"] / by_mode["naive"]["voxels_per_s"]
                    print(f"{net_name} {side}: {mode} / naive = {ratio:.1f}x")


if __name__ == "__main__":
    main()
