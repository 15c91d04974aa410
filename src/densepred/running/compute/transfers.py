"""Host <-> device copies beside the compute, for the read/compute/write pipeline.

On a CUDA device a batch goes up from page-locked (pinned) host memory on an upload stream of
its own, queued by the reader thread, and its results come down into pinned host memory on a
download stream, queued by the computing thread and waited for by the writer::

    reader thread     read batch k+2, pin it, queue its copy up    (upload stream)
    caller            wait for batch k+1's copy, queue its kernels (the device's current stream)
                      queue batch k's finish (softmax) and its copy down (download stream)
    writer thread     wait for batch k's copy down, then encode and write it

So the copies in both directions overlap the kernels, the computing thread does not wait for
a copy, and a writer waits for its own batch only. Each tensor used on a stream other
than the one that made it is recorded on that stream (``record_stream``), so the caching
allocator does not hand its memory out again before the copy or the kernels are done; pinned
host blocks come from torch's caching host allocator, which does the same for them.

On the CPU there is nothing to copy: an upload is the array itself and ``finish`` runs in the
writer thread, beside the next batch's compute on the other cores, as it always has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

Finish = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Upload:
    """A batch on its way to the device: ``tensor`` may be used once ``event`` has passed."""

    tensor: torch.Tensor
    event: torch.cuda.Event | None = None
    host: torch.Tensor | None = None  # the pinned source, kept alive while it is copied


@dataclass
class Download:
    """A result on its way to the host. ``numpy()`` waits for it (on CUDA) or finishes it
    (on the CPU) and returns it as an array: C-ordered, or its ``part`` (an index) of one."""

    tensor: torch.Tensor
    finish: Finish | None = None
    event: torch.cuda.Event | None = None
    index: Any = ()

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        tensor = self.tensor
        if self.finish is not None:
            with torch.inference_mode():  # a per-voxel finish: only the part is finished
                tensor = self.finish(tensor[self.index] if self.index else tensor)
            return tensor.cpu().contiguous().numpy()
        array = tensor.cpu().contiguous().numpy()  # the whole result is on the host: its part is a view
        return array[self.index] if self.index else array

    def part(self, index: Any) -> Download:
        """The part ``index`` of this result (``index`` keeps every axis, so a finish along the
        classes still applies), for a writer that finishes and writes only that part."""
        return replace(self, index=index)


class Transfers:
    """The copies of one engine's batches to and from ``device`` (see the module's docstring).

    ``upload`` runs in the reader thread, ``take`` and ``download`` in the computing thread,
    ``Download.numpy`` in a writer thread.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._up = torch.cuda.Stream(self.device) if self.cuda else None
        self._down = torch.cuda.Stream(self.device) if self.cuda else None

    def upload(self, array: np.ndarray) -> Upload:
        """``array`` queued for the device (on the CPU: the array as a tensor, shared)."""
        host = torch.from_numpy(np.ascontiguousarray(array))
        if not self.cuda:
            return Upload(host)
        host = host.pin_memory()
        with torch.cuda.stream(self._up):
            tensor = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._up)
        return Upload(tensor, event, host)

    def take(self, upload: Upload) -> torch.Tensor:
        """The uploaded tensor, usable by the kernels queued next on this thread's stream."""
        if upload.event is None:
            return upload.tensor
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(upload.event)
        upload.tensor.record_stream(stream)
        return upload.tensor

    def download(self, tensor: torch.Tensor, finish: Finish) -> Download:
        """``finish(tensor)`` on its way to the host: on CUDA finished on the device and copied
        into pinned memory on the download stream; on the CPU finished by ``Download.numpy``."""
        if not self.cuda:
            return Download(tensor, finish)
        with torch.inference_mode():
            result = finish(tensor).contiguous()
        self._down.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._down):
            host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
            host.copy_(result, non_blocking=True)
            event = torch.cuda.Event(blocking=True)  # the writer sleeps while it waits, leaving its core
            event.record(self._down)
        result.record_stream(self._down)
        return Download(host, None, event)
