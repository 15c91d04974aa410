"""Arrays a caller gives as ``out=``: checked before anything is computed, then written box by box.

``out`` may be a NumPy array or memmap, a zarr array, an h5py dataset, an xarray DataArray or
a torch tensor (on any device). Its dtype decides what is stored: a float dtype takes the
probabilities as they are (float16 rounds them); uint8 takes them as ``densepred predict
--dtype uint8`` stores them (times 255, rounded). An array that cannot take them is refused
before the first tile is computed: another integer dtype (which would truncate every
probability to 0 or 1 without a word), a read-only array, a lazy dask array, a wrong shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import DensePredError
from ...io.encoding import Encoding
from ...io.reading import reason

UINT8_TEXT = "uint8 (probabilities times 255, rounded, as densepred predict --dtype uint8 stores them)"


class OutArray:
    """``out`` with its checks done: :meth:`check_shape` once the result's shape is known, then
    :meth:`put` for every box."""

    def __init__(self, out: Any):
        self.out = out
        self.name = type(out).__name__
        if hasattr(out, "dask") and hasattr(out, "compute"):
            raise DensePredError(f"out is a lazy {self.name}: each write would add to its graph; pass the array it "
                                 "stands for (a zarr array, an h5py dataset, a NumPy array) and wrap that afterwards")
        if not hasattr(out, "shape") or not hasattr(out, "__setitem__"):
            raise DensePredError(f"out of type {self.name} is not an array; pass a NumPy array or memmap, a zarr "
                                 "array, an h5py dataset or a torch tensor")
        self.is_tensor = isinstance(out, torch.Tensor)
        self.encode = _encoding(out)
        if _read_only(out):
            raise DensePredError(f"out ({self.name}) is read-only; pass an array opened for writing")

    def check_shape(self, expected: Sequence[int]) -> None:
        if tuple(self.out.shape) != tuple(expected):
            raise DensePredError(f"out has shape {list(self.out.shape)}; this prediction needs {list(expected)}")

    def put(self, key: tuple[slice, ...], values: np.ndarray) -> None:
        """``out[key] = values``, float32 probabilities ``(K, *box)`` stored as ``out`` keeps them."""
        try:
            values = values if self.encode is None else self.encode(values)
            if self.is_tensor:
                with torch.no_grad():
                    self.out[key] = torch.from_numpy(np.ascontiguousarray(values)).to(self.out.device,
                                                                                      self.out.dtype)
            else:
                self.out[key] = values
        except DensePredError:
            raise
        except Exception as exc:  # a store that refuses writes, a full disk under a memmap or zarr array
            raise DensePredError(f"writing into out ({self.name}) failed: {reason(exc)}") from None


def _encoding(out: Any) -> Encoding | None:
    """None for a float ``out`` (values as they are), the uint8 encoding for uint8; else refused."""
    if isinstance(out, torch.Tensor):
        dtype = np.dtype(np.float32 if out.is_floating_point() else str(out.dtype).removeprefix("torch."))
    else:
        try:
            dtype = np.dtype(out.dtype)
        except (TypeError, AttributeError):
            raise DensePredError(f"out of type {type(out).__name__} has dtype {getattr(out, 'dtype', None)!r}, "
                                 "which NumPy does not know; pass an array of float32 (or float16, float64, "
                                 "uint8)") from None
    if dtype.kind == "f":
        return None
    if dtype == np.uint8:
        return Encoding(int(out.shape[0]) if len(out.shape) else 1, "uint8")
    raise DensePredError(f"out has dtype {dtype}, which cannot hold probabilities (an integer dtype would cut each "
                         f"to 0 or 1); pass an array of float32 (or float16, float64), or of {UINT8_TEXT}")


def _read_only(out: Any) -> bool:
    if isinstance(out, np.ndarray):
        return not out.flags.writeable
    if isinstance(out, torch.Tensor):
        return False
    file = getattr(out, "file", None)  # h5py
    return bool(getattr(out, "read_only", False)) or getattr(file, "mode", None) == "r"
