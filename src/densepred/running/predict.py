"""Dense prediction of images and volumes of any size, tile by tile (``predict_dense``).

Input values are scaled as :mod:`densepred.io.images` says (integers by their dtype's maximum).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import MODES
from ..errors import DensePredError
from ..geometry import STREAM_SLAB, Geometry, Tile, TilePlan
from ..io import ChannelFirst, read_window, to_float32
from ..networks import DenseEngine, DenseNet, StackEngine
from ..networks.foreign import ForeignNet
from ..system import mapped_zeros
from .devices import on_device, resolve_device
from .memory_budget import memory_budget
from .pipeline import run_pipeline
from .progress import Progress, ProgressOption
from .tiling import footprint_for, plan_and_mode, source_geometry

log = logging.getLogger("densepred")

# write(tile, probabilities, part, done): part None = the tile's whole owned box (see predict_tiles)
TileWriter = Callable[[Tile, np.ndarray, "tuple[slice, ...] | None", bool], None]


def predict_dense(
    net: DenseNet,
    image: Any,
    *,
    mirror: bool = False,
    tile_shape: Sequence[int] | int | None = None,
    mode: str = "auto",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: ProgressOption = False,
    out: Any = None,
    memory_limit: int | None = None,
    overlap: float = 0.5,
    tta: str | Sequence[int] | None = None,
    channel_map: dict[int, Sequence[int]] | None = None,
) -> np.ndarray | Any:
    """Class probabilities for every voxel of an image, exactly as if the network were applied
    to each field-of-view window separately.

    Args:
        net: a network from :func:`densepred.build_net` or :func:`create_prediction_net`.
        image: ``(C, *S)`` or ``(*S)`` for one channel; a NumPy array or an array-like
            (h5py dataset, zarr array, memmap) that is read tile by tile. For a 2D net also a
            stack of 2D images, ``(Z, Y, X)`` or ``(C, Z, Y, X)``, predicted slice by slice
            (the rule: :class:`densepred.io.ChannelFirst`).
        mirror: pad the image by mirror reflection (NumPy ``reflect`` mode) so the output
            covers the whole image; otherwise the output is smaller by ``FOV - 1`` and its
            voxel 0 is the prediction centred on image voxel ``offset``.
        tile_shape: input window per step (a scalar means the same on every axis). Larger is
            faster until memory runs out. For a stack, ``(z, y, x)`` (z slices per forward),
            or ``(y, x)`` with as many slices per forward as fit in memory. Default: the largest
            that fits ``memory_limit``. The result is the same for every valid tile shape.
        mode: ``"mfp"``, ``"dilated"``, ``"naive"``, ``"stream"`` or ``"auto"`` (the net's
            ``[prediction] mode``; if that is ``"auto"`` too: a stream where it spends fewer
            FLOPs than cube tiles, else MFP where the tile allows it, else dilated;
            see :func:`densepred.running.tiling.plan_and_mode`).
            ``tile_shape=None`` and ``mode="auto"`` fall back to the net's ``tile_shape`` and
            ``mode`` attributes, which :func:`create_prediction_net` sets.
        batch_size: tiles per forward pass (default 1).
        device: a torch device; default CUDA when available, else the CPU.
        progress: show a progress bar with voxels/s; or a callback that gets the
            :class:`~densepred.running.progress.Progress` after every tile and before every
            batch, and may raise :class:`densepred.errors.Cancelled` to stop the run.
        out: an array-like to stream the result into (a zarr array, an h5py dataset, a
            memmap) of the result's shape; each tile is written as soon as it is done, so
            memory depends on the tile, not on the image.
        memory_limit: bytes the whole process may use at its peak (resident memory on the
            CPU, allocated memory on a GPU); the default tile is the largest whose estimate
            fits. Default: half of the available RAM (60% of the free GPU memory). Without
            ``out`` the result array counts against it.

        overlap, tta, channel_map: for a model from :func:`densepred.from_torch` only (``mode``
            ``"exact"``, ``"blend"`` or ``"auto"``; ``tile_shape`` is its window); see
            :func:`densepred.running.foreign_predict.predict_foreign`.

    Returns:
        float32 probabilities of shape ``(n_classes, *(S - FOV + 1))``, or
        ``(n_classes, *S)`` with ``mirror=True``; ``out`` itself when given.

    Example:
        >>> net = densepred.build_net(densepred.load_config("examples/neuro3d.toml"))  # doctest: +SKIP
        >>> probs = densepred.predict_dense(net, volume, mirror=True)                  # doctest: +SKIP
    """
    if isinstance(net, ForeignNet):
        return _predict_foreign(net, image, mirror, tile_shape, mode, device, out, overlap, tta, channel_map,
                                progress, memory_limit)
    net_geometry = _image_geometry(net)
    if tile_shape is None:
        tile_shape = net.tile_shape
    if mode == "auto":
        mode = net.mode
    source = ChannelFirst(image, net.config.in_channels, net_geometry.ndim)
    geometry = source_geometry(net_geometry, source)
    device = resolve_device(device)
    batch_size = _positive(batch_size, "batch_size", default=1)
    if mode not in MODES:
        raise DensePredError(f"mode {mode!r} is invalid; valid: {', '.join(MODES)}")
    budget = memory_budget(memory_limit, device)
    if out is None:  # the result is held in memory whole
        budget = budget.less(4 * net.config.n_classes * math.prod(geometry.dense_output_shape(
            [n + (f - 1 if mirror else 0) for n, f in zip(source.spatial_shape, geometry.fov, strict=True)])))
    plan, engine_mode = plan_and_mode(geometry, source.spatial_shape, tile_shape, mode, mirror, budget,
                                      footprint_for(net, source, batch_size), device, stacked=source.stacked)
    engine = make_engine(net, engine_mode, device, source.stacked)
    log.info("%d tile(s) of input %s, %s engine", len(plan), list(plan.input_tile), engine_mode)

    expected = (net.config.n_classes, *plan.output_shape)
    if out is None:
        out = mapped_zeros(expected, np.float32)  # off the heap the activations reuse
    elif tuple(getattr(out, "shape", ())) != expected:
        raise DensePredError(f"out has shape {list(getattr(out, 'shape', []))}; this prediction needs {list(expected)}")

    def write(tile: Tile, probabilities: np.ndarray, part: tuple[slice, ...] | None, done: bool) -> None:
        out[(slice(None), *(part or tile.owned_slices()))] = probabilities

    predict_tiles(engine, source, plan, list(plan.tiles()), write, batch_size=batch_size, progress=progress)
    return out


def _predict_foreign(net: ForeignNet, image: Any, mirror: bool, window: Any, mode: str, device: Any, out: Any,
                     overlap: float, tta: Any, channel_map: Any, progress: ProgressOption,
                     memory_limit: int | None) -> np.ndarray:
    from .foreign_predict import predict_foreign

    if mirror:
        raise DensePredError("mirror=True is for densepred's own nets; a model from from_torch pads itself and "
                             "its output already covers the image")
    return predict_foreign(net, image, mode=mode, window=window, overlap=overlap, tta=tta, channel_map=channel_map,
                           device=device, out=out, progress=progress, memory_limit=memory_limit)


def output_origin(net: DenseNet | ForeignNet, image: Any, mirror: bool = False) -> tuple[int, ...]:
    """The image voxel that voxel 0 of ``predict_dense(net, image, mirror=mirror)`` is centred on.

    A viewer places the result exactly on the image by shifting it this many voxels.
    """
    if isinstance(net, ForeignNet):
        from .foreign_predict import source_of

        return tuple(source_of(net, image)[0].sizes.crop)
    net_geometry = _image_geometry(net)
    geometry = source_geometry(net_geometry, ChannelFirst(image, net.config.in_channels, net_geometry.ndim))
    return (0,) * geometry.ndim if mirror else tuple(geometry.offset)


def predict_tiles(engine: DenseEngine, source: ChannelFirst, plan: TilePlan, tiles: Sequence[Tile],
                  write: TileWriter, *, batch_size: int = 1, progress: ProgressOption = False,
                  prefetch: int = 2, pending: int = 2) -> None:
    """Compute ``tiles`` in batches of ``batch_size`` and hand each tile's probabilities, cropped to
    the box it owns, to ``write(tile, probabilities, part, done)`` in a background thread.

    ``part`` is None for the whole owned box (``tile.owned_slices()``). The stream engine hands
    a tile over in slabs instead: ``part`` is each slab's box in the output, and ``done`` is
    True with the tile's last slab. Tiles are batched in the order given; a caller that needs
    identical numbers on a rerun passes the same batches (see :mod:`densepred.running.file_job`).
    """
    bar = Progress(sum(math.prod(t.owned_shape) for t in tiles), f"predict ({engine.mode})", progress, terminal=True)
    try:
        if isinstance(engine, DenseEngine) and engine.mode == "stream":
            _stream_tiles(engine, source, plan, tiles, write, bar, prefetch, pending)
            return
        batches = [list(tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)]

        def read(batch: list[Tile]) -> np.ndarray:
            return np.stack([read_window(source, plan, tile) for tile in batch])

        def compute(windows: np.ndarray) -> np.ndarray:
            bar.poll()
            return _probabilities(engine(torch.from_numpy(windows)))

        def write_batch(batch: list[Tile], probabilities: np.ndarray) -> None:
            for tile, tile_probs in zip(batch, probabilities, strict=True):
                write(tile, tile_probs[(slice(None), *tile.owned_in_tile())], None, True)
                bar.update(math.prod(tile.owned_shape))

        run_pipeline(batches, read, compute, write_batch, prefetch=prefetch, pending=pending)
    finally:
        bar.close()


def _stream_tiles(engine: DenseEngine, source: ChannelFirst, plan: TilePlan, tiles: Sequence[Tile],
                  write: TileWriter, bar: Progress, prefetch: int, pending: int) -> None:
    """``mode="stream"``: each tile read, computed and written slab by slab along its first axis,
    so memory depends on the slab and the cross-section, not on the tile's length."""
    length = plan.input_tile[0]
    slabs = [(tile, a, min(a + STREAM_SLAB, length)) for tile in tiles for a in range(0, length, STREAM_SLAB)]
    current: dict[str, Any] = {"tile": None}

    def read(slab: tuple[Tile, int, int]) -> tuple[Tile, np.ndarray]:
        tile, a, b = slab
        return tile, read_window(source, plan, tile, rows=(a, b))

    def compute(item: tuple[Tile, np.ndarray]) -> tuple[int, np.ndarray | None]:
        bar.poll()
        tile, data = item
        if current["tile"] is not tile:
            current.update(tile=tile, push=engine.stream(), made=0)
        logits = current["push"](torch.from_numpy(data[None]))
        first = current["made"]
        if logits is None:
            return first, None
        current["made"] += logits.shape[2]
        return first, _probabilities(logits)[0]

    def write_slab(slab: tuple[Tile, int, int], result: tuple[int, np.ndarray | None]) -> None:
        tile, (first, probabilities) = slab[0], result
        if probabilities is None:
            return
        owned = tile.owned_in_tile()
        lo, hi = max(first, owned[0].start), min(first + probabilities.shape[1], owned[0].stop)
        if lo >= hi:
            return
        values = probabilities[(slice(None), slice(lo - first, hi - first), *owned[1:])]
        part = (slice(tile.output_start[0] + lo, tile.output_start[0] + hi), *tile.owned_slices()[1:])
        write(tile, values, part, hi == owned[0].stop)
        bar.update(values[0].size)

    run_pipeline(slabs, read, compute, write_slab, prefetch=prefetch, pending=pending)


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1).to(torch.float32).cpu().numpy()


def class_probabilities(net: DenseNet, x: Any, batch_size: int | None = None,
                        device: str | torch.device | None = None) -> np.ndarray:
    """Class probabilities ``(batch, n_classes)`` of feature vectors or image patches.

    ``x`` is ``(batch, features)`` for ``dims = 0`` nets, or a batch of patches
    ``(batch, C, *FOV)`` for image nets (``(batch, *FOV)`` with one channel).
    """
    cfg = net.config
    x = np.asarray(x)
    if cfg.dims == 0:
        expected = (cfg.in_channels,)
    else:
        assert net.geometry is not None
        expected = (cfg.in_channels, *net.geometry.fov)
        if x.ndim == cfg.dims + 1 and cfg.in_channels == 1:
            x = x[:, None]
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise DensePredError(
            f"input of shape {list(x.shape)} is invalid; expected (batch, {', '.join(map(str, expected))})"
            + ("" if cfg.dims == 0 else " (patches the size of the field of view)")
        )
    device = resolve_device(device)
    batch_size = _positive(batch_size, "batch_size", default=256)
    was_training = net.training
    net.eval()
    try:
        chunks = []
        model = on_device(net, device)
        dtype = next(model.parameters()).dtype
        with torch.inference_mode():
            for first in range(0, len(x), batch_size):
                chunk = torch.from_numpy(to_float32(x[first:first + batch_size])).to(device, dtype)
                logits = model(chunk)
                chunks.append(torch.softmax(logits.reshape(len(chunk), -1), dim=1).cpu().numpy())
    finally:
        net.train(was_training)
    return np.concatenate(chunks) if chunks else np.empty((0, cfg.n_classes), np.float32)


def make_engine(net: DenseNet, mode: str, device: torch.device, stacked: bool) -> DenseEngine | StackEngine:
    """The dense engine for a tile: the net's own, or run over the slices of a stack."""
    engine = DenseEngine(net, mode, device)
    return StackEngine(engine) if stacked else engine


def _image_geometry(net: Any) -> Geometry:
    if not isinstance(net, DenseNet):
        raise DensePredError("net must be a densepred network (build_net or create_prediction_net), "
                             f"got {type(net).__name__}")
    if net.geometry is None:
        raise DensePredError("this network classifies feature vectors (dims = 0); use class_probabilities")
    return net.geometry


def _positive(value: int | None, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise DensePredError(f"{name} = {value!r} is invalid; expected a positive integer")
    return int(value)


__all__ = ["class_probabilities", "output_origin", "predict_dense"]
