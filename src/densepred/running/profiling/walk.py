"""The walk over tile sizes: which shapes to measure, and when to stop. Plain arithmetic.

Before a shape runs, its peak memory is predicted from the measuring process's baseline plus
the activation estimate (:func:`densepred.geometry.tile_bytes`), scaled by how far the
previous measurement exceeded its own estimate; a mode stops growing when the prediction
passes the memory limit. When the time budget cannot cover every shape, the walk jumps ahead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...geometry import STREAM_SLAB, Geometry, tile_bytes
from ...geometry.memory import STREAM_LENGTH

if TYPE_CHECKING:
    from .report import ProfileRow

GROWTH = 1.35  # each shape has at least this many times the output voxels of the one before
SHAPE_SECONDS = 20.0  # repeats of one shape stop adding up after about this long
MAX_SHAPES = 60
JUMP = 8  # a jump over shapes (to stay in the time budget) grows the tile at most this much
CALIBRATE_BYTES = 64 * 2**20  # estimates from which a measured peak recalibrates the next prediction


def tile_walk(geometry: Geometry, aspect: Sequence[float], modes: Sequence[str], limit_bytes: int,
              growth: float = GROWTH) -> list[tuple[int, ...]]:
    """Output tiles from the smallest to the last whose activation estimate, for some mode,
    fits ``limit_bytes``.

    Each is a multiple of the stride on every axis (so its input is MFP-valid), follows
    ``aspect`` and has at least ``growth`` times the voxels of the one before.
    """
    shapes: list[tuple[int, ...]] = []
    side = 1.0
    while len(shapes) < MAX_SHAPES:
        shape = tuple(max(t, t * round(side * a / t)) for t, a in zip(geometry.stride, aspect, strict=True))
        side *= 1.02
        if shapes and math.prod(shape) < growth * math.prod(shapes[-1]):
            continue
        if all(tile_bytes(geometry, shape, m) > limit_bytes for m in modes):
            break
        shapes.append(shape)
    return shapes


class Walk:
    """Which shape and modes come next, given the memory limit, the time left and what was measured."""

    def __init__(self, geometry: Geometry, modes: Sequence[str], shapes: list[tuple[int, ...]], limit: int,
                 baseline: int, repeats: int):
        self.geometry, self.shapes, self.limit, self.baseline = geometry, shapes, limit, baseline
        self.repeats = repeats
        self.active = list(modes)
        self.last: dict[str, ProfileRow] = {}
        self.stops: list[str] = []

    def shape_for(self, mode: str, index: int) -> tuple[int, ...]:
        """The output tile measured for ``mode``: the walk's shape, or for a stream its cross-section
        with the stream length :func:`stream_length` (z is then the stream, not a tile side)."""
        shape = self.shapes[index]
        return (stream_length(self.geometry), *shape[1:]) if mode == "stream" else shape

    def fits(self, mode: str, index: int) -> bool:
        return self.predicted_peak(mode, index) <= self.limit

    def predicted_peak(self, mode: str, index: int) -> int:
        estimate = tile_bytes(self.geometry, self.shape_for(mode, index), mode)
        return predict_peak(self.baseline, estimate, self.last.get(mode))

    def seconds(self, mode: str, index: int) -> float:
        """Predicted time of a whole measurement (warm-up, repeats, overhead), scaled by FLOPs from
        the mode's last one."""
        previous = self.last.get(mode)
        if previous is None:
            return 0.0
        input_shape = self.geometry.input_shape_for(self.shape_for(mode, index))
        ratio = self.geometry.flops(input_shape, mode) / self.geometry.flops(previous.input_shape, mode)
        runs_before = 1 + repeats_for(previous.seconds, self.repeats)
        runs = 1 + repeats_for(previous.seconds * ratio, self.repeats)
        return previous.wall_seconds * ratio * runs / runs_before

    def cost(self, index: int) -> float:
        return sum(self.seconds(m, index) for m in self.active if self.fits(m, index))

    def next_index(self, index: int, seconds_left: float) -> int | None:
        """The next shape: the following one while the whole rest of the walk fits the time left.

        Otherwise a jump, of at most ``JUMP`` times the voxels, to the largest shape that costs
        at most a third of the time left (so points remain between here and the end), else to
        the largest shape still affordable at all.
        """
        later = [j for j in range(index + 1, len(self.shapes)) if any(self.fits(m, j) for m in self.active)]
        if not later:
            return None
        if sum(self.cost(j) for j in later) <= seconds_left:
            return later[0]
        near = [j for j in later if math.prod(self.shapes[j]) <= JUMP * math.prod(self.shapes[index])]
        for candidates, share in ((near, 3), (later, 1)):
            affordable = [j for j in candidates if self.cost(j) <= seconds_left / share]
            if affordable:
                return max(affordable)
        return None

    def stop(self, mode: str, why: str) -> None:
        self.active.remove(mode)
        self.stops.append(f"{mode}: {why}")


def stream_length(geometry: Geometry) -> int:
    """The output slices a profiled stream is long: four fields of view (the z halo then costs
    at most a quarter more) and at least 8 slabs, at most :data:`STREAM_LENGTH`."""
    return min(STREAM_LENGTH, max(8 * STREAM_SLAB, 4 * geometry.fov[0]))


def predict_peak(baseline: int, estimate: int, previous: ProfileRow | None) -> int:
    """The next shape's peak: the baseline plus the estimate, or the previous measured peak plus
    the growth of the estimate, whichever is larger; both scaled up if the last sizeable
    measurement exceeded its own estimate (below ``CALIBRATE_BYTES`` the allocator's granularity
    dominates the figure)."""
    if previous is None or not previous.peak_bytes:
        return baseline + estimate
    scale = 1.0
    if previous.estimated_bytes >= CALIBRATE_BYTES:
        scale = max(1.0, (previous.peak_bytes - baseline) / previous.estimated_bytes)
    from_previous = previous.peak_bytes + scale * max(estimate - previous.estimated_bytes, 0)
    return int(max(baseline + scale * estimate, from_previous))


def repeats_for(seconds: float, repeats: int) -> int:
    return max(1, min(repeats, int(SHAPE_SECONDS / max(seconds, 1e-9))))

