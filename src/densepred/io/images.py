"""Images as the networks see them: channels first, read box by box, scaled to float32.

Input values: float images are used as they are; integer images are divided by the
largest value of their dtype (uint8 by 255, uint16 by 65535, int16 by 32767), so they
arrive in [0, 1] (or [-1, 1] when signed); booleans become 0 and 1. Training and
prediction apply the same rule, so a net sees the same values in both.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DensePredError
from ..geometry import Tile, TilePlan
from .reading import read_box, reason

log = logging.getLogger("densepred")
_WARNED: set[str] = set()  # integer dtypes warned about, once per process
MAX_VOXELS = 2**60  # an exavoxel: beyond any volume, and within NumPy's int64 indexing


class ChannelFirst:
    """A view of an image as ``(C, *S)`` that reads boxes on demand from any array-like.

    For a 2D network (``dims = 2``) an image may also be a **stack** of 2D images, predicted
    or sampled slice by slice; then ``stacked`` is True and ``S`` is ``(Z, Y, X)``. The rule,
    by the number of axes and the network's ``C = in_channels``:

    ========  =========================  ==================================
    axes      C = 1                      C > 1
    ========  =========================  ==================================
    2         (Y, X) image               invalid
    3         (1, Y, X) image if the     (C, Y, X) image if the first axis
              first axis is 1, else      is C, else invalid (a stack of
              (Z, Y, X) stack            C-channel images is (C, Z, Y, X))
    4         (1, Z, Y, X) stack         (C, Z, Y, X) stack
    ========  =========================  ==================================

    A one-slice stack of a one-channel net is therefore written ``(1, 1, Y, X)``.
    """

    def __init__(self, image: Any, channels: int, dims: int):
        image = host_array(image)
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            try:
                image = np.asarray(image)
            except ValueError as exc:  # nested lists of unequal lengths
                raise DensePredError(f"the image is not an array of numbers: {reason(exc)}") from None
        shape = tuple(image.shape)
        self.image, self.channels = image, channels
        self.stacked = False
        if len(shape) == dims and channels == 1:
            self.has_channel_axis, self.spatial_shape = False, shape
        elif len(shape) == dims + 1 and shape[0] == channels:
            self.has_channel_axis, self.spatial_shape = True, shape[1:]
        elif dims == 2 and len(shape) == 3 and channels == 1:
            self.has_channel_axis, self.spatial_shape, self.stacked = False, shape, True
        elif dims == 2 and len(shape) == 4 and shape[0] == channels:
            self.has_channel_axis, self.spatial_shape, self.stacked = True, shape[1:], True
        else:
            raise DensePredError(f"image of shape {list(shape)} is invalid for this network; expected "
                                 f"{_expected(channels, dims)}")
        self.dtype = check_real(_numpy_dtype(image), "image")
        if 0 in shape:
            raise DensePredError(f"image of shape {list(shape)} has an empty axis: there is nothing to predict")
        if math.prod(shape) > MAX_VOXELS:
            raise DensePredError(f"image of shape {list(shape)} holds {math.prod(shape):.3g} values, more than any "
                                 f"volume densepred predicts (2^60); its file's metadata may be damaged")
        if np.issubdtype(self.dtype, np.integer) and self.dtype.itemsize >= 4 and self.dtype.str not in _WARNED:
            _WARNED.add(self.dtype.str)
            log.warning("image dtype %s: its values are divided by %d (the dtype's maximum), so images that use "
                        "only a small part of that range become nearly constant; convert the image to float32 "
                        "(or uint8/uint16) with the values the network was trained on", self.dtype,
                        np.iinfo(self.dtype).max)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        key = (slice(None), *box) if self.has_channel_axis else tuple(box)
        data = read_box(self.image, key)
        return data if self.has_channel_axis else data[None]


def host_array(image: Any) -> Any:
    """``image`` itself, or a NumPy array where it is a torch tensor (which NumPy cannot read on a
    GPU, with a gradient, or in bfloat16): copied to the host whole, bfloat16 as float32. A
    tensor already on the host shares its memory."""
    torch = sys.modules.get("torch")  # never imported here: a tensor exists only where torch was
    if torch is None or not isinstance(image, torch.Tensor):
        return image
    tensor = image.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as exc:  # complex32, quantized, sparse, float8 tensors
        raise DensePredError(f"a torch tensor of dtype {str(tensor.dtype).removeprefix('torch.')} and layout "
                             f"{str(tensor.layout).removeprefix('torch.')} cannot be read ({exc}); pass a dense "
                             "tensor of real numbers") from None


def check_real(dtype: np.dtype, what: str) -> np.dtype:
    """``dtype`` if it holds real numbers (integers, floats, booleans); else one line."""
    if not any(np.issubdtype(dtype, kind) for kind in (np.integer, np.floating, np.bool_)):
        raise DensePredError(f"{what} dtype {dtype} is invalid; expected real numbers (integers, floats or booleans)")
    return dtype


def _numpy_dtype(image: Any) -> np.dtype:
    try:
        return np.dtype(image.dtype)
    except (TypeError, AttributeError):
        raise DensePredError(f"an image of type {type(image).__name__} with dtype {getattr(image, 'dtype', None)!r} "
                             "cannot be read: NumPy does not know that dtype; pass a NumPy array, a torch tensor, "
                             "or an array-like with a NumPy dtype (zarr, h5py, dask, a memmap)") from None


def _expected(channels: int, dims: int) -> str:
    axes = ", ".join("zyx"[3 - dims:])
    text = f"({channels}, {axes})" + (f" or ({axes}) for one channel" if channels == 1 else "")
    if dims == 2:
        text += (", or a stack of such images: (Z, Y, X)" if channels == 1 else
                 f", or a stack of such images: ({channels}, Z, Y, X)")
    return text


class OneSliceStack:
    """A 2D image seen as a stack of one slice (``(C, 1, Y, X)``), so 2D images and stacks are
    sampled alike."""

    def __init__(self, image: ChannelFirst):
        self.image, self.dtype, self.stacked = image, image.dtype, True
        self.spatial_shape = (1, *image.spatial_shape)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        return self.image.read(box[1:])[:, None]


def read_window(source: ChannelFirst, plan: TilePlan, tile: Tile, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tile's input window as float32 ``(C, *input_tile)``, mirrored where it leaves the image;
    with ``rows``, only the slices ``[a, b)`` of the window along its first axis (a stream slab)."""
    return to_float32(_window(source, plan, tile, rows))


def _window(source: ChannelFirst, plan: TilePlan, tile: Tile, rows: tuple[int, int] | None) -> np.ndarray:
    """:func:`read_window` as stored (not yet float32)."""
    axes = plan.source_window(tile)
    if rows is not None:
        axes[0] = _rows_of(axes[0], *rows)
    data = source.read([slice(lo, hi) for lo, hi, _ in axes])
    if any(take is not None for _, _, take in axes):
        index = [np.arange(hi - lo) if take is None else np.asarray(take) for lo, hi, take in axes]
        data = data[(slice(None), *np.ix_(*index))]
    return data


class WindowRows:
    """A stream's slabs of tile windows, read in blocks of rows along the first axis.

    A slab is a few rows; the input's chunks (zarr, N5, HDF5) are often 64 deep, and each read
    of part of a chunk decodes all of it: read slab by slab, every chunk was decoded once per
    slab (8 times for 8-row slabs and 64-deep chunks), which made the reader the slow part of a
    stream of a light net. The window's rows are read in blocks that end on multiples of
    ``depth`` image rows (blocks of ``depth`` window rows where the window is mirrored along
    that axis), so each chunk of a depth that divides ``depth`` is read once; a slab across two
    blocks is joined from both. Blocks are kept as stored until their rows are read. One
    reader thread calls :meth:`read`, a tile's slabs in order.
    """

    def __init__(self, source: ChannelFirst, plan: TilePlan, depth: int):
        self.source, self.plan, self.depth = source, plan, depth
        self._tile: Tile | None = None
        self._blocks: list[tuple[int, int, np.ndarray]] = []

    def read(self, tile: Tile, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of ``tile``'s window as float32, as :func:`read_window` reads them."""
        if tile is not self._tile:
            self._tile, self._blocks = tile, []
        self._blocks = [block for block in self._blocks if block[1] > a]
        start = self._blocks[-1][1] if self._blocks else a
        while start < b:
            end = self._block_end(tile, start)
            self._blocks.append((start, end, _window(self.source, self.plan, tile, (start, end))))
            start = end
        parts = [data[:, max(a, lo) - lo:min(b, hi) - lo] for lo, hi, data in self._blocks if lo < b]
        return to_float32(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))

    def _block_end(self, tile: Tile, start: int) -> int:
        first, _, take = self.plan.source_window(tile)[0]
        step = self.depth - (first + start) % self.depth if take is None else self.depth
        return min(start + step, self.plan.input_tile[0])


def _rows_of(axis: tuple[int, int, list[int] | None], a: int, b: int) -> tuple[int, int, list[int] | None]:
    """The stored range and mirror indices of positions ``[a, b)`` of one axis of a window."""
    lo, _, take = axis
    if take is None:
        return lo + a, lo + b, None
    part = take[a:b]
    first = min(part)
    return lo + first, lo + max(part) + 1, [i - first for i in part]


def to_float32(data: np.ndarray) -> np.ndarray:
    """Float input as is; integers divided by their dtype's maximum; booleans as 0/1. The result
    is writable (a read-only memory map is copied), as torch tensors made from it must be."""
    if np.issubdtype(data.dtype, np.integer):
        top = np.iinfo(data.dtype).max
        if data.dtype.itemsize <= 2:
            # every 8- and 16-bit value is exact in float32, and float32 division gives the same
            # numbers as float64 division rounded to float32 (checked for all of them), in one pass
            return np.divide(data, np.float32(top), dtype=np.float32)
        return (data / top).astype(np.float32)
    values = np.ascontiguousarray(data, dtype=np.float32)
    return values if values.flags.writeable else values.copy()
