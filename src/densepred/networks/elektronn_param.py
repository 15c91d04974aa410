"""ELEKTRONN 1 weight files (``<save_name>-LAST.param``), read without trusting them.

A ``.param`` file is consecutive pickle records written by Python 2 (protocol 2): a list of
every layer's first parameter shape, then each layer's two parameters (W and b for a conv
layer, b and W for a perceptron layer), then the list of poolings. A pickle can name any
callable to run while it loads; this reader builds only NumPy arrays and dtypes (and the
containers and numbers pickle makes itself) and refuses everything else before calling it.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError

# What a pickled NumPy array or scalar needs, under NumPy 1 and 2 module names; and Python 3's
# protocol-2 spelling of bytes (tests and tools writing the format today use it).
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}
MAX_RECORDS = 10_000


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a weights file never needs")
        return super().find_class(module, name)


@dataclass
class ParamFile:
    """The records of a ``.param`` file: per layer its W and b, and the poolings."""

    path: Path
    shapes: list[tuple[int, ...]]  # as the file lists them (each layer's first parameter)
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W, b) per layer, whichever order the file had
    poolings: Any


def read_param_file(path: str | Path) -> ParamFile:
    """The arrays of an ELEKTRONN 1 ``.param`` file; one clear error for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DensePredError(f"cannot read the weights {path}: {exc.strerror or exc}") from None
    records = _records(path, data)
    if len(records) < 2 or not isinstance(records[0], list | tuple):
        raise DensePredError(f"{path} is not an ELEKTRONN 1 .param file: it should start with a list of "
                             "parameter shapes, then two arrays per layer, then the poolings")
    shapes = [tuple(int(v) for v in s) for s in records[0]]
    arrays, poolings = records[1:-1], records[-1]
    if len(arrays) != 2 * len(shapes) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise DensePredError(f"{path} lists {len(shapes)} layers but holds {len(arrays)} arrays after the list; "
                             f"expected {2 * len(shapes)} (two per layer), then the poolings")
    layers = [_w_and_b(path, i, arrays[2 * i], arrays[2 * i + 1], shapes[i]) for i in range(len(shapes))]
    return ParamFile(path, shapes, layers, poolings)


def _records(path: Path, data: bytes) -> list[Any]:
    stream = io.BytesIO(data)
    records: list[Any] = []
    while stream.tell() < len(data) and len(records) < MAX_RECORDS:
        try:
            records.append(_DataOnly(stream, encoding="latin1").load())
        except pickle.UnpicklingError as exc:
            raise DensePredError(f"refused {path}: record {len(records) + 1} is not plain data ({exc}); nothing in "
                                 "it was run") from None
        except MemoryError:  # a damaged record: an array shape far beyond the file's bytes
            raise DensePredError(f"{path} is not an ELEKTRONN 1 .param file (record {len(records) + 1} declares an "
                                 f"array larger than memory, in a file of {len(data)} bytes)") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
                LookupError) as exc:  # a damaged record: a frame past any size, an encoding no codec names
            raise DensePredError(f"{path} is not an ELEKTRONN 1 .param file (record {len(records) + 1} is "
                                 f"unreadable: {exc})") from None
    for record in records[1:-1]:
        if isinstance(record, np.ndarray) and record.dtype.kind not in "fiu":
            raise DensePredError(f"refused {path}: an array of dtype {record.dtype}; weights are numbers")
    return records


def _w_and_b(path: Path, layer: int, first: np.ndarray, second: np.ndarray,
             listed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if first.shape != listed:
        raise DensePredError(f"{path}: layer {layer}'s first array has shape {list(first.shape)}, the file's list "
                             f"says {list(listed)}")
    weight, bias = (first, second) if first.ndim > 1 else (second, first)
    if bias.ndim != 1 or weight.ndim < 2:
        raise DensePredError(f"{path}: layer {layer} holds arrays of shapes {list(first.shape)} and "
                             f"{list(second.shape)}; expected a weight array and a bias vector")
    return weight.astype(np.float32), bias.astype(np.float32)
