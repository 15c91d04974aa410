"""Find the fastest tile: measure dense-prediction speed against tile size up to the memory limit.

ELEKTRONN's ``elektronn-profile`` grew the input until memory ran out and timed one call per
size. Here each mode walks valid tile shapes from small to large with the aspect of the
training patch. Every shape gets a warm-up and then repeats (median time), and its peak
memory is *measured*: on the CPU as the peak resident memory of a worker process (reset
between shapes through ``/proc/self/clear_refs``), on CUDA as the allocator's peak.

Before a shape runs, its peak is predicted (:mod:`.walk`), and a mode stops growing when
the prediction passes the memory limit, so the machine never swaps or meets the kernel's OOM
killer. A CUDA out-of-memory error, or a worker killed anyway, becomes a row with status ``oom``.

This module runs the walk; :mod:`.walk` decides what comes next (pure), :mod:`.worker`
measures, :mod:`.report` writes the table, the plot and the config.

Speed is reported as output voxels/s and as useful FLOP/s over the peak of a large matrix
product measured in the same worker (DESIGN §7), so a fraction means the same on any machine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import Config, load_config, network_geometry
from ...errors import DensePredError
from ...geometry import Geometry, tile_bytes
from ...networks.devices import resolve_device
from ...networks.memory_budget import bytes_limit
from ...networks.precision import precision_for
from ...networks.precision_speed import remember
from ...progress import check_progress
from .report import (
    PROFILE_MODES,
    ProfileResult,
    check_measure_budget,
    check_out_folder,
    save_profile,
    shape_text,
    write_prediction_settings,
)
from .walk import Walk, tile_walk
from .worker import Worker

log = logging.getLogger("densepred")


def profile(config: Config | str | Path, *, device: str | None = None,
            modes: Sequence[str] = ("mfp", "dilated"), memory_limit: int | None = None,
            max_seconds: float = 600.0, out: str | Path | None = None, write: bool = False,
            aspect: Sequence[float] | None = None, repeats: int = 3, progress: bool = True,
            precision: str = "float32") -> ProfileResult:
    """Measure speed against tile size for each mode and return (and save) the table.

    Args:
        config: the network's config, or its path. ``--write`` needs a path.
        device: ``"cpu"`` or ``"cuda:N"``; default CUDA when available.
        modes: engines to profile (``mfp``, ``dilated``, ``naive``, ``stream``). A stream is
            measured over the walk's cross-sections with a fixed length (four fields of view,
            at least 64 slices, at most 512), and may win; ``write`` then stores its tile and
            ``mode = "stream"``.
        memory_limit: bytes the measuring process may use at its peak; default 80% of the RAM
            available now (CPU) or 90% of the free GPU memory.
        max_seconds: time budget for measuring shapes, counted once the measuring process
            has started and measured its matmul peak (a few seconds); a shape whose predicted
            time would pass it is not started.
        out: folder for ``profile.csv`` and ``profile.png``; default the config's save dir;
            ``None`` with an in-memory config writes nothing.
        write: store the fastest tile as ``[prediction] tile_shape`` and ``mode`` in the config file.
        aspect: relative tile extent per axis (z, y, x); default the training patch's aspect.
        repeats: timed runs per shape after the warm-up (fewer for shapes slower than ~20 s).
        progress: show which shape is running.
        precision: the engines' arithmetic (``float32``, ``tf32``, ``bfloat16``, ``float16``); the
            matmul peak is measured in it too, and ``profile.csv`` names it per row. Any but
            float32 also times float32 on its fastest tile (a row of its own) and keeps the
            verdict: ``predict`` refuses a precision measured slower than float32.

    Example:
        >>> result = densepred.profile("examples/m36.toml", max_seconds=300)   # doctest: +SKIP
        >>> result.best.input_shape, result.best.mode                          # doctest: +SKIP
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    if cfg.network.dims == 0:
        raise DensePredError("networks with dims = 0 classify feature vectors; there is no tile to profile")
    modes = _check_modes(modes)
    if not isinstance(write, bool):
        raise DensePredError(f"write = {write!r} is invalid; expected True or False")
    check_progress(progress)
    if write and cfg.path is None:
        raise DensePredError("write=True needs a config loaded from a file")
    check_measure_budget(max_seconds, repeats)
    check_out_folder(out if out is not None else cfg.save_dir)
    memory_limit = bytes_limit(memory_limit)
    geometry = network_geometry(cfg.network)
    ratio = _aspect(cfg, geometry, aspect)
    resolved = resolve_device(device)
    device = str(resolved)
    precision = precision_for(precision, resolved).name
    with Worker(cfg, device, precision) as worker:
        limit = memory_limit if memory_limit is not None else worker.default_limit
        result = ProfileResult([], worker.matmul_flops, device, limit, worker.baseline, precision=precision)
        deadline = time.monotonic() + max_seconds
        _walk(worker, geometry, modes, ratio, limit, deadline, repeats, progress, result)
    if precision != "float32":
        _against_float32(cfg, resolved, result, repeats)
    folder = Path(out) if out is not None else cfg.save_dir
    if folder is not None:
        result.csv_path, result.png_path = save_profile(result, folder, cfg.name)
    if write and result.best is not None:
        write_prediction_settings(cfg.path, result.best.input_shape, result.best.mode)
    return result


def _walk(worker: Worker, geometry: Geometry, modes: Sequence[str], aspect: Sequence[float],
          limit: int, deadline: float, repeats: int, progress: bool, result: ProfileResult) -> None:
    """Shapes in increasing size, all modes at each size, until memory or time runs out."""
    shapes = tile_walk(geometry, aspect, modes, max(limit - worker.baseline, 0))
    walk = Walk(geometry, modes, shapes, limit, worker.baseline, repeats)
    bar = _bar(progress, len(shapes))
    index: int | None = 0 if shapes else None
    if index is None:
        result.stops.append(f"even the smallest tile is estimated to exceed the memory limit of "
                            f"{limit / 2**30:.2f} GiB (the measuring process holds {worker.baseline / 2**30:.2f} GiB "
                            "before a tile); "
                            "raise --memory-limit (memory_limit=)")
    while index is not None and walk.active:
        for mode in list(walk.active):
            output_shape = walk.shape_for(mode, index)
            input_shape = geometry.input_shape_for(output_shape)
            if not walk.fits(mode, index):
                need = walk.predicted_peak(mode, index) / 2**30
                walk.stop(mode, f"{shape_text(input_shape)} would need about {need:.2f} GiB, over the limit of "
                                f"{limit / 2**30:.2f} GiB")
                continue
            if bar is not None:
                bar.set_description(f"{mode} {shape_text(input_shape)}")
            row = worker.measure(mode, input_shape, output_shape, tile_bytes(geometry, output_shape, mode),
                                 repeats)
            result.rows.append(row)
            if row.status != "ok":
                walk.stop(mode, f"{shape_text(input_shape)} ran out of memory")
                worker.restart_if_dead()
                continue
            walk.last[mode] = row
        seconds_left = deadline - time.monotonic()
        following = walk.next_index(index, seconds_left)
        if bar is not None:
            bar.update((len(shapes) if following is None else following) - index)
        if following is None and walk.active:
            walk.stops.append(_why_stopped(walk, geometry, index, seconds_left, limit))
        index = following
    result.stops.extend(walk.stops)
    if bar is not None:
        bar.close()


def _against_float32(cfg: Config, device: Any, result: ProfileResult, repeats: int) -> None:
    """Time float32 on the fastest tile of the profile's precision that float32 fits too, add
    that row, and remember both rates (:mod:`densepred.networks.precision_speed`): a prediction
    in a precision measured slower than float32 is refused."""
    fitting = [r for r in result.rows if r.status == "ok" and r.precision == result.precision
               and result.baseline + r.estimated_bytes <= result.memory_limit]
    if not fitting:
        return
    tile = max(fitting, key=lambda r: r.voxels_per_s)
    with Worker(cfg, str(device), "float32") as worker:
        row = worker.measure(tile.mode, tile.input_shape, tile.output_shape, tile.estimated_bytes, repeats)
    result.rows.append(row)
    if row.status == "ok":
        remember(cfg.network, device, result.precision, tile.voxels_per_s, row.voxels_per_s,
                 f"densepred profile, {tile.mode} {shape_text(tile.input_shape)}")


def _why_stopped(walk: Walk, geometry: Geometry, index: int, seconds_left: float, limit: int) -> str:
    """Why the walk ends after ``index``: memory (no larger shape fits any mode) or time."""
    following = index + 1
    if following < len(walk.shapes) and any(walk.fits(m, following) for m in walk.active):
        return (f"at the time budget: {shape_text(geometry.input_shape_for(walk.shapes[following]))} and larger would "
                f"not finish in the {max(seconds_left, 0):.0f} s left")
    if following < len(walk.shapes):
        peak = min(walk.predicted_peak(m, following) for m in walk.active)
        return (f"at the memory limit: {shape_text(geometry.input_shape_for(walk.shapes[following]))} would need about "
                f"{peak / 2**30:.2f} GiB, over the limit of {limit / 2**30:.2f} GiB")
    return "at the memory limit: the next shape's activation estimate exceeds it"


def _check_modes(modes: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in PROFILE_MODES]
    if bad or not modes:
        raise DensePredError(f"modes {list(modes)} are invalid; choose from {', '.join(PROFILE_MODES)}")
    return tuple(dict.fromkeys(modes))


def _aspect(cfg: Config, geometry: Geometry, aspect: Sequence[float] | None) -> tuple[float, ...]:
    """Relative extent per axis, largest 1: given, else the config's patch or tile, else cubic."""
    if aspect is None:
        patch = cfg.network.patch_size or (cfg.training.patch_size if cfg.training else None) \
            or cfg.prediction.tile_shape
        aspect = patch if patch is not None else (1,) * geometry.ndim
    try:
        values = tuple(float(a) for a in aspect)
    except (TypeError, ValueError):
        values = ()
    if len(values) != geometry.ndim or not all(0 < a < math.inf for a in values):
        raise DensePredError(f"aspect {list(aspect)} is invalid; expected {geometry.ndim} positive numbers (z, y, x)")
    largest = max(values)
    return tuple(a / largest for a in values)


def _bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shape", desc="profile")
