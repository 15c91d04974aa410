"""How probabilities become stored values: a class subset, a dtype, or argmax labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DensePredError
from .outputs import OUTPUT_DTYPES


@dataclass(frozen=True)
class Encoding:
    """How probabilities become stored values: a class subset, a dtype, or argmax labels."""

    n_classes: int
    dtype: str = "float32"
    classes: tuple[int, ...] | None = None
    argmax: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in OUTPUT_DTYPES:
            raise DensePredError(f"dtype {self.dtype!r} is invalid; valid: {', '.join(OUTPUT_DTYPES)}")
        if self.argmax and self.classes is not None:
            raise DensePredError("--argmax stores one label per voxel; it cannot be combined with --classes")
        if self.classes is not None:
            bad = [c for c in self.classes if not 0 <= c < self.n_classes]
            if bad or not self.classes or len(set(self.classes)) != len(self.classes):
                raise DensePredError(f"classes {list(self.classes)} are invalid; expected distinct class "
                                     f"indices in 0..{self.n_classes - 1}")

    @property
    def channels(self) -> int | None:
        """Channels of the stored array; None for argmax labels (no channel axis)."""
        if self.argmax:
            return None
        return len(self.classes) if self.classes is not None else self.n_classes

    @property
    def stored_dtype(self) -> np.dtype:
        if self.argmax:
            return np.dtype(np.uint8 if self.n_classes <= 256 else np.uint16)
        return np.dtype(self.dtype)

    def keeps(self, probabilities: np.ndarray) -> bool:
        """Whether ``probabilities`` are stored as they are (no subset, no conversion)."""
        return not self.argmax and self.classes is None and probabilities.dtype == self.stored_dtype

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """``(K, *box)`` float32 probabilities -> stored values."""
        if self.argmax:
            return probabilities.argmax(axis=0).astype(self.stored_dtype)
        selected = probabilities if self.classes is None else probabilities[list(self.classes)]
        if self.dtype != "uint8":
            return selected.astype(self.stored_dtype, copy=False)
        # in place on one float32 copy; NaN (an input window with NaN) is stored as 0 (fmax
        # drops it), and the job reports such voxels
        scaled = np.multiply(selected, np.float32(255), out=None if selected is probabilities else selected)
        np.fmax(scaled, np.float32(0), out=scaled)
        return np.rint(scaled, out=scaled).astype(np.uint8)
