"""One forward of a model written elsewhere: seconds per window by allocator setting, and
throughput by window size.

``--allocators``: MONAI's BasicUNet with its default instance norm (contiguous, as densepred
runs it; ``--norm batch``: eval batch norm, channels-last, as densepred runs that) on a
64x128x128 window, each setting in a process of its own: glibc's defaults
(``DENSEPRED_NO_MALLOC_TUNING=1``), large blocks returned to the system (densepred's setting
while a model's windows run where the memory budget is tight), that with PyTorch's huge
pages (``THP_MEM_ALLOC_ENABLE=1``, what ``import densepred`` asks for), and the heap keeping
freed blocks with huge pages (densepred's setting where the budget holds twice the windows'
estimate). Three forwards after a warm-up; peak resident memory of the process.

``--sizes``: the small MONAI UNet of ``foreign_memory.py`` (channels-last, large blocks
returned), output voxels/s of one forward per input size.

MONAI is needed for this benchmark only: ``.venv/bin/pip install monai``.

    python benchmarks/foreign_window_speed.py --allocators
    python benchmarks/foreign_window_speed.py --allocators --norm batch
    python benchmarks/foreign_window_speed.py --sizes 64,128,128 64,256,256 128,256,256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {  # name -> environment
    "glibc defaults": {"DENSEPRED_NO_MALLOC_TUNING": "1", "THP_MEM_ALLOC_ENABLE": "0"},
    "large blocks returned": {"THP_MEM_ALLOC_ENABLE": "0"},
    "returned + huge pages": {"THP_MEM_ALLOC_ENABLE": "1"},
    "kept + huge pages": {"THP_MEM_ALLOC_ENABLE": "1", "DENSEPRED_BENCH_HEAP": "kept"},
}


def one_setting(window: tuple[int, ...], norm: str) -> dict:
    import contextlib
    import resource

    import torch
    from monai.networks.nets import BasicUNet

    import densepred  # before any tensor is made: it tunes the allocator (unless the environment says not)

    torch.manual_seed(0)
    model = BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, norm=norm).eval()
    x = torch.rand(1, 1, *window)
    if norm == "batch":
        model, x = model.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)
    tuned = not os.environ.get("DENSEPRED_NO_MALLOC_TUNING")
    returned = os.environ.get("DENSEPRED_BENCH_HEAP") != "kept"
    with (densepred.system.large_blocks_returned(returned) if tuned else contextlib.nullcontext()), \
            torch.inference_mode():
        model(x)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            model(x)
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "huge_pages": densepred.system.huge_pages_requested()}


def sizes(shapes: list[tuple[int, ...]]) -> None:
    import torch
    from monai.networks.nets import UNet

    import densepred

    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=[16, 32, 64], strides=[2, 2],
                 norm="batch", num_res_units=0).eval().to(memory_format=torch.channels_last_3d)
    print("| input | seconds | Mvoxel/s |")
    print("|---|---|---|")
    with densepred.system.large_blocks_returned(), torch.inference_mode():
        for shape in shapes:
            x = torch.rand(1, 1, *shape).contiguous(memory_format=torch.channels_last_3d)
            model(x)
            best = min(_timed(model, x) for _ in range(2))
            voxels = shape[0] * shape[1] * shape[2]
            print(f"| {'x'.join(map(str, shape))} | {best:.2f} | {voxels / best / 1e6:.2f} |", flush=True)


def _timed(model: object, x: object) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allocators", action="store_true")
    parser.add_argument("--window", default="64,128,128")
    parser.add_argument("--norm", default="instance", choices=("instance", "batch"), help="BasicUNet's norm")
    parser.add_argument("--sizes", nargs="*")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    window = tuple(int(v) for v in args.window.split(","))
    if args.child:
        print(json.dumps(one_setting(window, args.norm)))
        return
    if args.allocators:
        print(f"BasicUNet, {args.norm} norm, window {args.window}")
        print("| setting | seconds per window (3 runs) | peak RSS GiB | huge pages asked |")
        print("|---|---|---|---|")
        for name, env in SETTINGS.items():
            child = subprocess.run([sys.executable, __file__, "--child", "--window", args.window, "--norm", args.norm],
                                   env={**os.environ, **env}, capture_output=True, text=True, check=True)
            info = json.loads(child.stdout.strip().splitlines()[-1])
            runs = " / ".join(f"{s:.2f}" for s in info["seconds"])
            print(f"| {name} | {runs} | {info['peak_gib']:.2f} | {info['huge_pages']} |", flush=True)
    if args.sizes:
        sizes([tuple(int(v) for v in s.split(",")) for s in args.sizes])


if __name__ == "__main__":
    main()
