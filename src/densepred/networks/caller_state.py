"""What a call leaves as it found it in the caller's process: a model's training flags and
torch's random state.

A model handed to :func:`densepred.from_torch` may be one the caller is still training. Every
probe and prediction of it runs in eval mode (batch norm on its running statistics, no
dropout), whatever mode the caller left it in, and every submodule's own flag is put back
after (:func:`evaluating`). densepred's own random draws (probe inputs, matmul timings) use
generators of their own; where building a module draws from torch's global generator (initial
weights that trained ones then replace) or training seeds it, the caller's state is put back
after (:func:`rng_kept`), so a seeded notebook or training loop draws the same numbers whether
or not it predicted in between.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

_lock = threading.Lock()
_held: dict[int, list[Any]] = {}  # id(model) -> [calls inside, (module, its flag) before the first]


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[Any]:
    """``model`` in eval mode inside; each submodule's training flag as it was after the last of
    the calls using it at once (threads) has left."""
    if not isinstance(model, torch.nn.Module):
        yield model
        return
    key = id(model)
    with _lock:
        entry = _held.get(key)
        if entry is None:
            entry = _held[key] = [0, [(m, m.training) for m in model.modules()]]
            with contextlib.suppress(NotImplementedError, RuntimeError):  # an exported program keeps its mode
                model.eval()
        entry[0] += 1
    try:
        yield model
    finally:
        with _lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _held[key]
                for module, flag in entry[1]:
                    if module.training != flag:
                        module.training = flag


@contextlib.contextmanager
def rng_kept(device: torch.device | str | None = None) -> Iterator[None]:
    """torch's global random state (the CPU's, and ``device``'s when it is a GPU) as it was
    before, whatever is drawn inside."""
    device = None if device is None else torch.device(device)
    devices = [] if device is None or device.type != "cuda" else [
        device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def generator(seed: int = 0) -> torch.Generator:
    """A CPU generator of densepred's own, so its draws leave the caller's random state alone."""
    return torch.Generator().manual_seed(seed)


__all__ = ["evaluating", "generator", "rng_kept"]
