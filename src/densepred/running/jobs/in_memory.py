"""Predictions held in memory, or streamed into an array the caller gives (``predict_dense``).

Own nets are cut into tiles (:mod:`densepred.running.planning.tiling`) and run through the
read/compute/write pipeline (:func:`densepred.running.compute.tiles.predict_tiles`); models from
elsewhere run exact or blended windows (:class:`densepred.running.compute.model_run.ModelRun`).
Input values are scaled as :mod:`densepred.io.images` says (integers by their dtype's maximum).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...config import MODES
from ...errors import DensePredError
from ...geometry import Geometry, Tile
from ...io import ChannelFirst, kept_bytes_of, to_float32
from ...io.images import check_real, host_array
from ...io.reading import reason
from ...networks import DenseNet
from ...networks.caller_state import evaluating
from ...networks.devices import on_device, resolve_device
from ...networks.foreign import ForeignNet
from ...networks.memory_budget import bytes_limit, memory_budget
from ...networks.precision import autocast, precision_for
from ...networks.precision_speed import refuse_if_slower
from ...progress import Progress, ProgressOption, check_progress
from ...system import large_blocks_returned, mapped_zeros
from ..compute.model_run import ExactPiece, ModelRun, source_of
from ..compute.sink import NonFinite
from ..compute.tiles import make_engine, predict_tiles
from ..compute.window_options import refuse_for_own_nets, whole
from ..planning.tiling import footprint_for, plan_and_mode, source_geometry, writer_threads
from .out_arrays import OutArray

log = logging.getLogger("densepred")


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
    precision: str = "float32",
) -> np.ndarray | Any:
    """Class probabilities for every voxel of an image, exactly as if the network were applied
    to each field-of-view window separately.

    Args:
        net: a network from :func:`densepred.build_net` or :func:`create_prediction_net`.
        image: ``(C, *S)`` or ``(*S)`` for one channel; a NumPy array or an array-like
            (h5py dataset, zarr array, dask array, memmap) that is read tile by tile, or a torch
            tensor (copied to the host whole where NumPy cannot read it as it is). For a 2D net also a
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
            see :func:`densepred.running.planning.tiling.plan_and_mode`).
            ``tile_shape=None`` and ``mode="auto"`` fall back to the net's ``tile_shape`` and
            ``mode`` attributes, which :func:`create_prediction_net` sets.
        batch_size: tiles per forward pass (default 1).
        device: a torch device; default CUDA when available, else the CPU.
        progress: show a progress bar with voxels/s; or a callback that gets the
            :class:`~densepred.progress.Progress` after every tile and before every
            batch, and may raise :class:`densepred.errors.Cancelled` to stop the run.
        out: an array-like to stream the result into (a zarr array, an h5py dataset, a
            memmap, a torch tensor) of the result's shape; each tile is written as soon as it
            is done, so memory depends on the tile, not on the image. A float ``out`` takes the
            probabilities, a uint8 one takes them times 255, rounded (as ``--dtype uint8``);
            others are refused before any tile (:mod:`densepred.running.jobs.out_arrays`).
        memory_limit: bytes the whole process may use at its peak (resident memory on the
            CPU, allocated memory on a GPU); the default tile is the largest whose estimate
            fits. Default: half of the available RAM (60% of the free GPU memory). Without
            ``out`` the result array counts against it.
        precision: ``"float32"`` (exact, the default), ``"tf32"`` (NVIDIA GPUs),
            ``"bfloat16"`` or ``"float16"``: the arithmetic of the network; softmax and the
            result stay float32. The error each costs: docs/PRECISION.md.

        overlap, tta, channel_map: for a model from :func:`densepred.from_torch` only (``mode``
            ``"exact"``, ``"blend"`` or ``"auto"``; ``tile_shape`` is its window); see
            :func:`predict_foreign`.

    Returns:
        float32 probabilities of shape ``(n_classes, *(S - FOV + 1))``, or
        ``(n_classes, *S)`` with ``mirror=True``; ``out`` itself when given.

    Example:
        >>> net = densepred.build_net(densepred.load_config("examples/neuro3d.toml"))  # doctest: +SKIP
        >>> probs = densepred.predict_dense(net, volume, mirror=True)                  # doctest: +SKIP
    """
    if not isinstance(mirror, bool | np.bool_):
        raise DensePredError(f"mirror = {mirror!r} is invalid; expected True or False")
    check_progress(progress)
    memory_limit = bytes_limit(memory_limit)
    if isinstance(net, ForeignNet):
        if batch_size is not None:
            raise DensePredError("batch_size is for densepred's own nets; a model from from_torch runs one window "
                                 "at a time (tile_shape is its window)")
        return _predict_foreign(net, image, mirror, tile_shape, mode, device, out, overlap, tta, channel_map,
                                progress, memory_limit, precision)
    net_geometry = _image_geometry(net)
    refuse_for_own_nets(overlap=overlap, tta=tta, channel_map=channel_map)
    if tile_shape is None:
        tile_shape = net.tile_shape
    if mode == "auto":
        mode = net.mode
    source = ChannelFirst(image, net.config.in_channels, net_geometry.ndim)
    target = None if out is None else OutArray(out)  # refused before any work
    geometry = source_geometry(net_geometry, source)
    device = resolve_device(device)
    precision = precision_for(precision, device)
    refuse_if_slower(net.config, device, precision.name)
    batch_size = _positive(batch_size, "batch_size", default=1)
    if mode not in MODES:
        raise DensePredError(f"mode {mode!r} is invalid; valid: {', '.join(MODES)}")
    budget = memory_budget(memory_limit, device).less(kept_bytes_of(source))
    if out is None:  # the result is held in memory whole
        budget = budget.less(4 * net.config.n_classes * math.prod(geometry.dense_output_shape(
            [n + (f - 1 if mirror else 0) for n, f in zip(source.spatial_shape, geometry.fov, strict=True)])))
    plan, engine_mode = plan_and_mode(geometry, source.spatial_shape, tile_shape, mode, mirror, budget,
                                      footprint_for(net, source, batch_size, device), device, stacked=source.stacked)
    engine = make_engine(net, engine_mode, device, source.stacked, precision)
    log.info("%d tile(s) of input %s, %s engine", len(plan), list(plan.input_tile), engine_mode)

    expected = (net.config.n_classes, *plan.output_shape)
    if target is None:
        out = mapped_zeros(expected, np.float32)  # off the heap the activations reuse
        target = OutArray(out)
    target.check_shape(expected)

    non_finite = NonFinite((0,) * geometry.ndim if mirror else tuple(geometry.offset))

    def write(tile: Tile, probabilities: np.ndarray, part: tuple[slice, ...] | None, done: bool) -> None:
        box = part or tile.owned_slices()
        non_finite.check_box([s.start for s in box], probabilities)
        target.put((slice(None), *box), probabilities)

    # tiles own disjoint boxes: an array in memory takes them from several writers at once, an
    # array-like with chunks of its own (zarr, HDF5) from one, as tiles may share its chunks
    writers = writer_threads(device) if isinstance(out, np.ndarray) else 1
    predict_tiles(engine, source, plan, plan.all_tiles(), write, batch_size=batch_size, progress=progress,
                  writers=writers)
    if non_finite.count:
        log.warning("%s; they are NaN in the result: clean the input", non_finite.found())
    return out


def _predict_foreign(net: ForeignNet, image: Any, mirror: bool, window: Any, mode: str, device: Any, out: Any,
                     overlap: float, tta: Any, channel_map: Any, progress: ProgressOption,
                     memory_limit: int | None, precision: str) -> np.ndarray:
    if mirror:
        raise DensePredError("mirror=True is for densepred's own nets; a model from from_torch pads itself and "
                             "its output already covers the image")
    return predict_foreign(net, image, mode=mode, window=window, overlap=overlap, tta=tta, channel_map=channel_map,
                           device=device, out=out, progress=progress, memory_limit=memory_limit, precision=precision)


def output_origin(net: DenseNet | ForeignNet, image: Any, mirror: bool = False) -> tuple[float, ...]:
    """The image voxel that voxel 0 of ``predict_dense(net, image, mirror=mirror)`` is centred on.

    A viewer places the result exactly on the image by shifting it this many voxels (whole
    voxels, but for a model whose output is at another scale: a fraction of one).
    """
    if isinstance(net, ForeignNet):
        return source_of(net, image)[0].sizes.origin()
    net_geometry = _image_geometry(net)
    geometry = source_geometry(net_geometry, ChannelFirst(image, net.config.in_channels, net_geometry.ndim))
    return (0,) * geometry.ndim if mirror else tuple(geometry.offset)


def class_probabilities(net: DenseNet, x: Any, batch_size: int | None = None,
                        device: str | torch.device | None = None, precision: str = "float32") -> np.ndarray:
    """Class probabilities ``(batch, n_classes)`` of feature vectors or image patches.

    ``x`` is ``(batch, features)`` for ``dims = 0`` nets, or a batch of patches
    ``(batch, C, *FOV)`` for image nets (``(batch, *FOV)`` with one channel).
    ``precision``: as in :func:`predict_dense`; the 16-bit types run the net under
    ``torch.autocast``, the softmax stays float32.
    """
    cfg = net.config
    try:
        x = np.asarray(host_array(x))
    except ValueError as exc:  # nested lists of unequal lengths
        raise DensePredError(f"input is not an array of numbers: {reason(exc)}") from None
    check_real(x.dtype, "input")
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
    chosen = precision_for(precision, device)
    batch_size = _positive(batch_size, "batch_size", default=256)
    chunks = []
    with evaluating(net):
        model = on_device(net, device)
        dtype = next(model.parameters()).dtype
        with torch.inference_mode(), autocast(chosen, device):
            for first in range(0, len(x), batch_size):
                chunk = torch.from_numpy(to_float32(x[first:first + batch_size])).to(device, dtype)
                logits = model(chunk).float()
                chunks.append(torch.softmax(logits.reshape(len(chunk), -1), dim=1).cpu().numpy())
    result = np.concatenate(chunks) if chunks else np.empty((0, cfg.n_classes), np.float32)
    bad = np.flatnonzero(~np.isfinite(result).all(axis=1))
    if len(bad):
        log.warning("%d of %d inputs have no finite probabilities because they hold NaN or inf (the first: %d); "
                    "they are NaN in the result: clean the input", len(bad), len(result), bad[0])
    return result


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
    if not whole(value) or value < 1:
        raise DensePredError(f"{name} = {value!r} is invalid; expected a positive integer")
    return int(value)


def predict_foreign(net: ForeignNet, image: Any, *, mode: str = "auto", window: Sequence[int] | int | None = None,
                    overlap: float = 0.5, tta: str | Sequence[int] | None = None,
                    channel_map: dict[int, Sequence[int]] | None = None,
                    device: str | torch.device | None = None, out: Any = None,
                    progress: ProgressOption = False, memory_limit: int | None = None,
                    precision: str = "float32") -> np.ndarray | Any:
    """``(K, *(S - 2 crop))`` float32 outputs of ``net`` over ``image`` (``(C, *S)``, or ``(*S)``).

    ``out``: an array-like of that shape (zarr, h5py, memmap, a torch tensor; float, or uint8
    as ``--dtype uint8`` stores them) that exact windows are written into as they finish
    (memory: one window); blending into ``out`` goes through
    ``densepred predict --model`` (file to file, streamed), so it is refused here.
    ``progress``: as in :func:`densepred.predict_dense`, updated after every window.
    ``memory_limit``: bytes the process may use at its peak (default: half the available
    memory); without ``window`` an exact run takes the largest window it holds, the result
    counted against it unless ``out`` is given (:mod:`densepred.running.planning.model_window`).
    ``precision``: as in :func:`densepred.predict_dense` (16-bit types under ``torch.autocast``).
    """
    with evaluating(net.model):  # whatever mode the caller left the model in; its flags kept
        net, source = source_of(net, image)
        target = None if out is None else OutArray(out)  # refused before the probes
        with large_blocks_returned():  # the probes' memory
            run = ModelRun.create(net, source, mode, window, overlap, tta, channel_map, device,
                                  memory_limit=memory_limit, in_memory=out is None, precision=precision)
        with large_blocks_returned(not run.heap_kept):
            if target is None:  # in its own memory map: on the heap it would split the space activations reuse
                out = mapped_zeros((run.written.channels, *run.output_shape), np.float32)
                if run.mode == "blend":
                    return _blend_into(run, out, progress)
                target = OutArray(out)
            _exact_into(run, target, progress)
            return target.out


def _blend_into(run: ModelRun, out: np.ndarray, progress: ProgressOption) -> np.ndarray:
    """Every window's Gaussian-weighted outputs summed, then divided by the weight sum a z slice
    at a time."""
    windows = list(run.blend_windows())
    bar = Progress(math.prod(run.output_shape), "predict (blend)", progress, terminal=True)

    def take(starts: tuple[int, ...], result: np.ndarray) -> None:
        box, values = run.weigh(starts, result)
        out[(slice(None), *(slice(a, b) for a, b in box))] += values
        bar.update(math.prod(run.output_shape) / len(windows))

    try:
        run.forward_each(windows, take, poll=bar.poll)
    finally:
        bar.close()
    for z in range(run.output_shape[0]):
        out[:, z:z + 1] /= run.weight_sum(((z, z + 1), *((0, n) for n in run.output_shape[1:])))[None]
    return out


def _exact_into(run: ModelRun, out: OutArray, progress: ProgressOption) -> None:
    if run.mode != "exact":
        raise DensePredError("out= takes exact predictions (memory: one window); to blend a volume larger than "
                             "memory, predict file to file: densepred predict --model ... --mode blend")
    out.check_shape((run.written.channels, *run.output_shape))
    bar = Progress(math.prod(run.output_shape), "predict (exact)", progress, terminal=True)

    def take(piece: ExactPiece, result: np.ndarray) -> None:
        out.put((slice(None), *(slice(a, b) for a, b in piece.box)), run.crop_owned(piece, result))
        bar.update(math.prod(b - a for a, b in piece.box))

    try:
        run.forward_each(run.exact_windows(), take, starts=lambda piece: piece.starts, poll=bar.poll)
    finally:
        bar.close()


__all__ = ["class_probabilities", "output_origin", "predict_dense", "predict_foreign"]
