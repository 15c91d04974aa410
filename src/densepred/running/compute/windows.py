"""One window of a model written elsewhere: read (preprocessed, padded as a whole-image forward
pads), computed (flipped views averaged, then activated, in float32: :func:`window_logits`,
:func:`activated`), and weighed for blending."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...io import ChannelFirst, to_float32
from ...networks.devices import dtype_of
from ...networks.foreign import ForeignNet
from ...networks.precision import FLOAT32, Precision, autocast
from .preprocess import Prepared


def gaussian(n: int) -> np.ndarray:
    """Per-axis blending weights: a Gaussian with sigma n/8 centred on the window, floored at
    1e-3 of its peak so edge voxels covered by one window keep a defined value."""
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * (n / 8) ** 2))
    return np.maximum(g / g.max(), 1e-3).astype(np.float32)


def outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The outer product of per-axis vectors, in float32."""
    result = np.asarray(vectors[0], np.float32)
    for v in vectors[1:]:
        result = np.multiply.outer(result, np.asarray(v, np.float32))
    return result


def window_logits(model: Any, x: torch.Tensor, flips: list[tuple[int, ...]], channel_map: Any,
                  memory_format: torch.memory_format | None = None, precision: Precision = FLOAT32) -> torch.Tensor:
    """The logits of the window ``x`` (``(1, C, *window)``, on the model's device) averaged over
    the flipped views (a running sum of their logits), in float32."""
    x_t = x.to(dtype_of(model))
    if memory_format is not None and x_t.dim() == (5 if memory_format == torch.channels_last_3d else 4):
        x_t = x_t.contiguous(memory_format=memory_format)
    total = None
    with torch.inference_mode():
        with autocast(precision, x_t.device):
            for axes in flips:
                dims = [a + 2 for a in axes]
                logits = model(x_t.flip(dims) if dims else x_t).float()
                if dims:
                    logits = logits.flip(dims)
                    for a in axes:
                        if channel_map and a in channel_map:
                            logits = logits[:, list(channel_map[a])]
                total = logits if total is None else total + logits
        assert total is not None, "a window has at least the identity view"
        return total / len(flips)


def activated(net: ForeignNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """A window's finish: the net's activation of its averaged logits, in float32, as ``(K, *window)``."""
    return lambda logits: net.activate(logits)[0].float()


def read_window(source: ChannelFirst, starts: Sequence[int], window: Sequence[int],
                prepared: Prepared | None = None, padding: tuple[str, float] = ("constant", 0.0)) -> np.ndarray:
    """The window at ``starts``, preprocessed, padded beyond the image's high end (its padding to
    the factor, after the preprocessing, as a whole-image forward would pad it): with zeros, or
    as ``padding`` says (NumPy's mode and, for ``constant``, the value). A window that holds the
    image's high end pads from it, so edge, reflect and symmetric padding equal the image's."""
    box = tuple(slice(s, min(s + w, n)) for s, w, n in zip(starts, window, source.spatial_shape, strict=True))
    if prepared is None:
        data = to_float32(source.read(box))
    else:  # the steps act on the values as stored
        data = prepared.apply(Prepared.values(source.read(box)), starts)
    pad = [(0, 0)] + [(0, w - (b.stop - b.start)) for w, b in zip(window, box, strict=True)]
    if not any(p for _, p in pad[1:]):
        return np.ascontiguousarray(data)
    mode, value = padding
    return np.pad(data, pad, constant_values=value) if mode == "constant" else np.pad(data, pad, mode=mode)


def timed_window(run: Any, window: Sequence[int], repeats: int) -> tuple[float, int | None]:
    """Median seconds of ``run``'s forward of one ``window`` of random input (after a warm-up
    forward), activation and copy to the host included, and on CUDA the allocator's peak over
    what was allocated before (None on the CPU). A CUDA out-of-memory error propagates."""
    x = np.random.default_rng(0).random((run.net.in_channels, *window), dtype=np.float32)
    cuda = run.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(run.device)
        base = torch.cuda.memory_allocated(run.device)
        torch.cuda.reset_peak_memory_stats(run.device)
    run.compute_window(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run.compute_window(x)  # returns on the host: the copy down is waited for
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated(run.device) - base if cuda else None
