"""Numbers typed by a user (CLI options, widget fields): sizes, integer and float lists."""

from __future__ import annotations

import re

from ..errors import DensePredError

SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
              "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str, option: str) -> int:
    """``"8GiB"``, ``"500MB"``, ``"2e9"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise DensePredError(f"{option} {text!r} is invalid; expected a size like 8GiB, 500MB or 2000000000")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


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
