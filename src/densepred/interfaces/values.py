"""Numbers typed by a user (CLI options, widget fields): sizes, shapes, integer and float lists."""

from __future__ import annotations

import argparse

from ..config.schema import PRECISIONS
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


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (steps, counts), refused before any work."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; expected a positive whole number")
    return value


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                        help="the network's arithmetic: float32 (exact, the default), tf32 (NVIDIA GPUs), "
                             "bfloat16 or float16; their error: docs/PRECISION.md")


def parse_shape(text: str, dims: int, option: str, stack: bool = False) -> tuple[int, ...]:
    """``"64"`` or ``"32,64,64"`` -> a tuple of ``dims`` positive integers (or ``dims + 1`` with
    ``stack``: a 2D net over a stack of images takes (z, y, x) too)."""
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * dims
    if len(values) not in _lengths(dims, stack) or any(v < 1 for v in values):
        raise DensePredError(f"{option} {text!r} is invalid; expected {_counts_text(dims, stack)} positive integers "
                             f"like {','.join(['64'] * dims)} (z, y, x order) or one integer for all axes")
    return tuple(values)


def _lengths(dims: int, stack: bool) -> tuple[int, ...]:
    return (dims, dims + 1) if stack and dims == 2 else (dims,)


def _counts_text(dims: int, stack: bool) -> str:
    return " or ".join(str(n) for n in _lengths(dims, stack))


def parse_numbers(text: str, dims: int, option: str, stack: bool = False) -> tuple[float, ...]:
    """``"1"`` or ``"1,4,4"`` -> ``dims`` positive numbers (``dims + 1`` allowed with ``stack``)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * dims
    if len(values) not in _lengths(dims, stack) or any(v <= 0 for v in values):
        raise DensePredError(f"{option} {text!r} is invalid; expected {_counts_text(dims, stack)} positive numbers "
                             f"like {','.join(['1'] * dims)} (z, y, x order)")
    return tuple(values)


def parse_indices(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise DensePredError(f"{option} {text!r} is invalid; expected class indices like 1 or 1,2")
    return values


def parse_roi(text: str, dims: int, stack: bool = False) -> list[tuple[int, int]]:
    """``"0:10,5:50,5:50"`` -> ``[(0, 10), (5, 50), (5, 50)]``."""
    example = ",".join(["0:64"] * dims)
    try:
        roi = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        roi = []
    if len(roi) not in _lengths(dims, stack) or any(len(r) != 2 or not 0 <= r[0] < r[1] for r in roi):
        raise DensePredError(f"--roi {text!r} is invalid; expected {_counts_text(dims, stack)} ranges start:stop "
                             f"like {example} (z, y, x order, stop excluded)")
    return roi  # type: ignore[return-value]
