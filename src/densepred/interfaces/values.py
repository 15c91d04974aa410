"""Numbers typed by a user (CLI options, widget fields): sizes, integer and float lists."""

from __future__ import annotations

from ..errors import DensePredError
from ..system import parse_size


def parse_ints(text: str | None, dims: int | None, option: str) -> tuple[int, ...] | None:
    """``"64,128,128"`` -> a tuple (``dims`` values; one value is repeated), ``None`` for blank."""
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if dims is not None and len(values) == 1:
        values = values * dims
    if not values or (dims is not None and len(values) != dims) or any(v < 0 for v in values):
        count = f"{dims} " if dims else ""
        raise DensePredError(f"{option} {text!r} is invalid; expected {count}non-negative integers like 64,128,128")
    return values


def parse_floats(text: str, option: str = "--voxel-size") -> tuple[float, ...]:
    """``"40,4,4"`` -> a tuple of floats."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DensePredError(f"{option} {text!r} is invalid; expected numbers like 40,4,4") from None


__all__ = ["parse_floats", "parse_ints", "parse_size"]
