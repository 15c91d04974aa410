"""The modules a ``PredictJob`` passes through, in order: how often each is entered.

A call from one module of ``densepred.running`` into another is a step of the walk (an entry);
a module entered again after the walk left it counts once more, a return to the caller does not.
Repeated identical calls (a loop over tiles or windows: the same function, making the same
calls below it) count once; the layers below (geometry, io, networks, the foundation) and the
code dataclasses generate (building a result) are not steps. Only the calling thread is traced (the pipeline's
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
    """The ``densepred.running`` modules a ``predict_to_file(job)`` enters, in order, with a
    repeated call collapsed: of identical sibling calls (the same module making the same
    calls below it, as a loop over tiles does) only the first is kept."""
    root = _Node("", None)
    stack = [root]

    def profile(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        generated = frame.f_code.co_filename.startswith("<")  # a dataclass's __init__: data, not a step
        if event == "call" and module.startswith("densepred.running") and module != stack[-1].module \
                and not generated:
            node = _Node(module, frame)
            stack[-1].children.append(node)
            stack.append(node)
        elif event == "return" and stack[-1].frame is frame:
            stack.pop()

    sys.setprofile(profile)
    try:
        densepred.predict_to_file(job)
    finally:
        sys.setprofile(None)
    return [node.module.removeprefix("densepred.running.") for node in root.collapsed()]


class _Node:
    def __init__(self, module: str, frame) -> None:
        self.module, self.frame, self.children = module, frame, []

    def signature(self) -> tuple:
        """The module, the function entered and the calls below: a loop's repeated calls match."""
        return (self.module, self.frame.f_code.co_name, tuple(dict.fromkeys(c.signature() for c in self.children)))

    def collapsed(self) -> list[_Node]:
        """The walk below this node in order, identical sibling calls once."""
        seen, path = set(), []
        for child in self.children:
            if child.signature() not in seen:
                seen.add(child.signature())
                path += [child, *child.collapsed()]
        return path


def report(title: str, path: list[str]) -> None:
    counts = collections.Counter(path)
    top = ", ".join(f"{m} {n}x" for m, n in counts.most_common(4))
    print(f"{title}: {len(path)} steps through {len(counts)} modules of densepred.running; most entered: {top}")
    print("  " + " -> ".join(path))


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
