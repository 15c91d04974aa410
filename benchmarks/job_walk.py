"""The modules a ``PredictJob`` passes through, in order: how often each is entered.

A call from one densepred module into another is a step of the walk; a module entered again
after the walk left it counts once more. Only the calling thread is traced (the pipeline's
reader and writer threads run the same modules). Run an own net and a model from elsewhere on
small random inputs:

    python benchmarks/job_walk.py
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import densepred
from densepred.networks.weights import save_weights

CONFIG = """name = "walk"
[network]
dims = 3
in_channels = 1
n_classes = 2
layers = [{ filters = 4, kernel = [1, 3, 3], pool = [1, 2, 2] }, { filters = 4, kernel = 3 }]
"""


def walk(job: densepred.PredictJob) -> list[str]:
    """The densepred modules entered while ``predict_to_file(job)`` runs, in order."""
    path: list[str] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if module.startswith("densepred.") and (not path or path[-1] != module):
            path.append(module)

    sys.setprofile(profile)
    try:
        densepred.predict_to_file(job)
    finally:
        sys.setprofile(None)
    return path


def report(title: str, path: list[str]) -> None:
    counts = collections.Counter(path)
    print(f"{title}: {len(path)} steps through {len(counts)} modules; most entered: "
          + ", ".join(f"{m.removeprefix('densepred.')} {n}x" for m, n in counts.most_common(5)))
    running = [m for m in path if m.startswith("densepred.running")]
    order = list(dict.fromkeys(running))
    print("  running modules in order of first entry: " + " -> ".join(m.removeprefix("densepred.running.")
                                                                         for m in order))


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "walk.toml").write_text(CONFIG)
        save_weights(densepred.build_net(densepred.load_config(folder / "walk.toml")), folder / "walk-LAST.safetensors")
        np.save(folder / "in.npy", np.random.default_rng(0).random((12, 40, 40), dtype=np.float32))
        own = densepred.PredictJob(folder / "walk.toml", str(folder / "in.npy"), str(folder / "own.zarr"),
                                   progress=False, levels=2)
        report("own net, file to file", walk(own))
        model = torch.nn.Conv3d(1, 2, 3, padding=1)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "conv.safetensors")
        (folder / "conv.py").write_text("from torch import nn\n\n\ndef Conv():\n"
                                        "    return nn.Conv3d(1, 2, 3, padding=1)\n")
        foreign = densepred.PredictJob(None, str(folder / "in.npy"), str(folder / "model.zarr"),
                                       model=f"{folder / 'conv.py'}:Conv", weights=str(folder / "conv.safetensors"),
                                       progress=False, levels=2)
        report("model from elsewhere, file to file", walk(foreign))


if __name__ == "__main__":
    main()
