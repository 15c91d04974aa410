"""Named axes of an input, put in densepred's order: channels first, then z, y, x.

Microscopy files say what their axes are: bioformats2raw writes every OME-Zarr image as
``(t, c, z, y, x)``, Fiji saves a multi-channel stack as ``ZCYX``, a colour TIFF is ``YXS``
(samples last). Read as they are, each has the wrong number of axes, or channels in the wrong
place, for a network that takes ``(C, Z, Y, X)``. :func:`channel_first` gives a lazy view in
that order: a colour sample axis becomes the channel axis, axes of one element that are
neither channel nor space (a single time point) are dropped, and a time series whose images
have no z becomes a stack (what a 2D network predicts slice by slice). A time series of
volumes is one volume per time point: ``time`` picks one (a spec's ``@t=N``); without it the
series is refused in one line naming that choice.

    >>> import numpy as np
    >>> channel_first(np.zeros((1, 2, 5, 6, 7)), "TCZYX", "a.zarr").shape
    (2, 5, 6, 7)
    >>> channel_first(np.zeros((6, 7, 3)), "YXS", "rgb.tif").shape
    (3, 6, 7)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DensePredError
from .reading import read_box

ORDER = "CZYX"
KNOWN = set("TCSZYX")


def channel_first(array: Any, axes: str | None, where: str, time: int | None = None,
                  choose_time: str | None = None) -> Any:
    """``array`` (whose axes are named by ``axes``, letters of ``T C S Z Y X``, or None when
    unknown) as ``(C?, Z?, Y, X)``: ``array`` itself where that is its order already or the
    axes are unknown, else an :class:`AxesView`; with ``time``, that time point alone.
    ``choose_time``: how to name a time point, said when a time series of volumes is given
    whole (default: the spec's ``@t=N``)."""
    shape = tuple(int(n) for n in array.shape)
    if axes is None or len(axes) != len(shape) or not set(axes) <= KNOWN or len(set(axes)) != len(axes):
        if time is not None:
            raise DensePredError(f"{where}@t={time} names a time point, but the axes of {where} (shape "
                                 f"{list(shape)}) are not named, so none is known to be time")
        return array
    sizes = dict(zip(axes, shape, strict=True))
    fixed = {} if time is None else {"T": _time_point(sizes, axes, where, time)}
    sizes.update(dict.fromkeys(fixed, 1))  # the one time point taken is as if the only one
    role: dict[str, str | None] = {a: a if a in ORDER else None for a in axes}  # None: left out (one element)
    if "S" in sizes:  # colour samples are the channels, unless the file has channels too
        if sizes.get("C", 1) > 1 and sizes["S"] > 1:
            raise DensePredError(f"{where} has both channels ({sizes['C']}) and colour samples ({sizes['S']}) per "
                                 "voxel; densepred reads one channel axis: write the channels out as one")
        if sizes.get("C", 1) == 1:
            role["S"], role["C"] = "C", None
    if sizes.get("T", 1) > 1:
        if "Z" in sizes:
            choose = choose_time or f"name a time point, {where}@t=0 to {where}@t={sizes['T'] - 1}"
            raise DensePredError(f"{where} is a time series of {sizes['T']} volumes ({axes}); densepred predicts one "
                                 f"volume at a time: {choose}")
        role["T"] = "Z"  # images over time: a stack, predicted image by image by a 2D network
    target = sorted((a for a in axes if role[a] is not None), key=lambda a: ORDER.index(role[a] or ""))
    return array if target == list(axes) else AxesView(array, axes, target, fixed)


def _time_point(sizes: dict[str, int], axes: str, where: str, time: int) -> int:
    """``time``, checked against the time points of an array of ``sizes``."""
    points = sizes.get("T")
    if points is None:
        raise DensePredError(f"{where}@t={time} names a time point, but {where} has no time axis (its axes: {axes})")
    if time >= points:
        raise DensePredError(f"{where}@t={time} is past the end of its {points} time point(s): valid are @t=0 to "
                             f"@t={points - 1}")
    return time


NAMES = {"t": "T", "time": "T", "c": "C", "ch": "C", "channel": "C", "channels": "C", "z": "Z", "y": "Y", "x": "X"}


def axis_letters(names: Any) -> str | None:
    """Axis names (``["c", "z", "y", "x"]``, ``"zyxc"``) as letters of ``TCZYX``; None when any
    name is unknown or missing.

        >>> axis_letters(["z", "y", "x", "c"]), axis_letters(["z", "row", "col"]), axis_letters(["", "", ""])
        ('ZYXC', None, None)
    """
    if not names:
        return None
    letters = [NAMES.get(str(name).lower()) for name in names]
    return None if None in letters else "".join(letters)  # type: ignore[arg-type]


class AxesView:
    """``array`` with the axes ``target`` (a reordering of some of ``axes``) in that order;
    every other axis has one element and is left out. Boxes are read through
    :func:`~densepred.io.reading.read_box`, so zarr inputs keep their fast chunk reader."""

    def __init__(self, array: Any, axes: str, target: list[str], fixed: dict[str, int] | None = None):
        self.array, self.axes, self.target = array, axes, target
        self.fixed = fixed or {}  # the element taken of an axis left out (default: its only one)
        shape = dict(zip(axes, array.shape, strict=True))
        self.shape = tuple(int(shape[a]) for a in target)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = (*key[:at], *[slice(None)] * (self.ndim - len(key) + 1), *key[at + 1:])
        key = (*key, *[slice(None)] * (self.ndim - len(key)))
        # integers are read as boxes of one and taken out after
        boxes = {a: k if isinstance(k, slice) else slice(int(k) % n, int(k) % n + 1)
                 for a, k, n in zip(self.target, key, self.shape, strict=True)}
        data = read_box(self.array, tuple(boxes.get(a, slice(self.fixed.get(a, 0), self.fixed.get(a, 0) + 1))
                                          for a in self.axes))
        kept = [a for a in self.axes if a in boxes]
        data = data.reshape([n for a, n in zip(self.axes, data.shape, strict=True) if a in boxes])
        data = np.transpose(data, [kept.index(a) for a in self.target])
        return data[tuple(slice(None) if isinstance(k, slice) else 0 for k in key)]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)
