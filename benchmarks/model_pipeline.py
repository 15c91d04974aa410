"""A model written elsewhere, file to file: how much of the run is the model, and how much the
reading and writing around it.

Two small PyTorch models in a ``.py`` file (random weights) predict a uint8 zarr volume into
OME-Zarr (``--dtype uint8``, one level) with ``densepred predict --model FILE.py:Class``, each run
a fresh process; the same windows' forwards alone are timed in this process, so the run's time
over the forwards' is what reading, writing and start-up add. ``--src`` runs another checkout's
``src`` (before and after a change), interleaved with this one.

    python benchmarks/model_pipeline.py                               # exact and blend, both models
    python benchmarks/model_pipeline.py --src /path/to/old/src --repeats 3
"""

from __future__ import annotations

import densepred  # first: its allocator settings apply before torch's first allocation

# isort: split
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

MODELS = '''
import torch
from torch import nn


class Light(nn.Module):
    """Two 3x3x3 convolutions and a 1x1x1 to two classes: little compute per voxel."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv3d(8, 2, 1))

    def forward(self, x):
        return self.body(x)


class Small(nn.Module):
    """A two-level U-Net (16 and 32 maps, batch norm): the compute of a small real model."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU())

        self.down, self.bottom = block(1, 16), block(16, 32)
        self.up = nn.ConvTranspose3d(32, 16, 2, stride=2)
        self.out = nn.Sequential(block(32, 16), nn.Conv3d(16, 2, 1))

    def forward(self, x):
        skip = self.down(x)
        return self.out(torch.cat([skip, self.up(self.bottom(nn.functional.max_pool3d(skip, 2)))], 1))
'''


def prepare(work: Path, shape: tuple[int, ...]) -> None:
    from safetensors.torch import save_file

    (work / "models.py").write_text(MODELS)
    sys.path.insert(0, str(work))
    import models

    for name in ("Light", "Small"):
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in getattr(models, name)().state_dict().items()},
                  work / f"{name}.safetensors")
    rng = np.random.default_rng(0)
    image = zarr.create_array(work / "in.zarr", shape=shape, chunks=(64, 64, 64), dtype="uint8", overwrite=True)
    for z in range(0, shape[0], 64):
        image[z:z + 64] = rng.integers(0, 256, (min(64, shape[0] - z), *shape[1:]), dtype=np.uint8)


def one_run(work: Path, name: str, mode: str, tile: str, src: str | None, limit: str | None) -> tuple[float, float]:
    """One ``densepred predict`` process: its seconds and its peak resident memory (GiB)."""
    env = dict(os.environ, PYTHONPATH=src) if src else None
    command = ["/usr/bin/time", "-f", "peak %M", sys.executable, "-m", "densepred", "predict",
               "--model", f"{work / 'models.py'}:{name}", "--weights",
               str(work / f"{name}.safetensors"), "--input", str(work / "in.zarr"), "--output",
               str(work / f"out-{name}-{mode}.zarr"), "--mode", mode, "--levels", "1", "--dtype", "uint8",
               "--quiet", "--overwrite"]
    command += [] if tile == "default" else ["--tile", tile]
    command += [] if limit is None else ["--memory-limit", limit]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    peak = int(done.stderr.strip().splitlines()[-1].split()[-1]) / 2**20  # KiB -> GiB
    return time.perf_counter() - start, peak


def forwards_alone(work: Path, name: str, mode: str, tile: tuple[int, ...], shape: tuple[int, ...]) -> float:
    """The seconds of the run's forwards alone: one window's forward (after a warm-up) times the
    number of windows the run computes, as densepred plans them."""
    import models

    from densepred.running.compute.model_run import ModelRun
    from densepred.system import large_blocks_returned

    model = getattr(models, name)()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(work / f"{name}.safetensors"))
    net = densepred.from_torch(model.eval(), dims=3, in_channels=1)
    from densepred.io import ChannelFirst

    source = ChannelFirst(zarr.open_array(work / "in.zarr", mode="r"), 1, 3)
    run = ModelRun.create(net, source, mode, tile, 0.5, None, None, "cpu", None)
    starts = [p.starts for p in run.exact_windows()] if mode == "exact" else list(run.blend_windows())
    with large_blocks_returned(not run.heap_kept):  # as the run computes its windows
        run.forward(starts[0])
        begin = time.perf_counter()
        for s in starts[:4]:
            run.forward(s)
    return (time.perf_counter() - begin) / 4 * len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="128,512,512")
    parser.add_argument("--tile", default="64,128,128", help="the window, or 'default' (exact: the largest the "
                        "memory limit holds)")
    parser.add_argument("--memory-limit", help="passed to densepred predict")
    parser.add_argument("--models", default="Light,Small")
    parser.add_argument("--modes", default="exact,blend")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--src", help="another checkout's src folder, run interleaved with this one")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    tile = None if args.tile == "default" else tuple(int(v) for v in args.tile.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, shape)
        for name in args.models.split(","):
            for mode in args.modes.split(","):
                row: dict[str, object] = {"model": name, "mode": mode}
                if tile is not None:
                    row["forwards_alone_s"] = round(forwards_alone(work, name, mode, tile, shape), 2)
                sources = {"run": None, **({"src_run": args.src} if args.src else {})}
                runs: dict[str, list[tuple[float, float]]] = {label: [] for label in sources}
                for _ in range(args.repeats):  # interleaved
                    for label, src in sources.items():
                        runs[label].append(one_run(work, name, mode, args.tile, src, args.memory_limit))
                for label, done in runs.items():
                    row[f"{label}_s"] = [round(t, 2) for t, _ in done]
                    row[f"{label}_peak_gib"] = [round(p, 2) for _, p in done]
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
