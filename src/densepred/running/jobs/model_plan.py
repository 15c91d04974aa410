"""``densepred plan --model``: size a prediction of a model written elsewhere before it runs:
its windows, the blocks a cluster gets, the bytes read and written, and the hours on N workers.

The windows are those the run would compute (:class:`~densepred.running.compute.model_run.ModelRun`
over an image of the input's shape, with the same mode, window and memory budget), so the
counts are the run's own. Time needs a measured rate: one window timed now (``measure``) or
the row of a ``model_profile.csv`` (``densepred profile --model --out``) for that window.
Nothing is read but the input's shape and dtype, and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DensePredError
from ...geometry import BlockPlan, pyramid
from ...io import ArraySpec, ChannelFirst, open_array
from ...io.ome_zarr import Placement
from ...networks.bioimageio import is_rdf
from ...networks.foreign import ForeignNet
from ...networks.precision import FLOAT32
from ...networks.precision_speed import MODEL_AGAIN, device_name, model_key, remember, slower_message
from ...progress import count_text, shape_text
from ..compute.model_run import ModelRun
from ..compute.preprocess import Prepared
from ..compute.windows import timed_window
from ..executors.cluster import tiles_per_block
from ..planning.job_plan import bytes_text, placement_text, planned_placement, read_profile, time_lines
from .job import PredictJob
from .model_job import BLEND_SHARDS_PER_BLOCK, job_net


@dataclass(frozen=True)
class ModelPlan:
    """What a model's prediction job will do, and how long it takes at a measured rate."""

    model: str
    output_shape: tuple[int, ...]  # spatial
    channels: int  # stored
    window: tuple[int, ...]
    mode: str
    windows: int
    views: int  # forwards per window (flip test-time augmentation)
    blocks: BlockPlan
    input_bytes: int  # at most: every window's input read
    output_bytes: int  # level 0 and the pyramid
    seconds_per_window: float | None
    rate_source: str
    workers: int
    placement: Placement | None = None  # of the input, from its metadata
    from_file: bool = False  # planned for an input file (not a shape): its placement is said

    @property
    def seconds(self) -> float | None:
        if self.seconds_per_window is None:
            return None
        return self.windows * self.seconds_per_window / self.workers

    def report(self) -> str:
        voxels = math.prod(self.output_shape)
        views = f", {self.views} views each" if self.views > 1 else ""
        lines = [
            f"model '{self.model}': output {shape_text((self.channels, *self.output_shape))} "
            f"({count_text(voxels)} voxels, {self.channels} channel(s))",
            f"windows  {count_text(self.windows)} of {shape_text(self.window)} ({self.mode}{views})",
            f"blocks   {count_text(len(self.blocks))} of {shape_text(self.blocks.block)} output voxels (whole "
            "shards; on a cluster a window that straddles two blocks is computed in both)",
            f"read     at most {bytes_text(self.input_bytes)} (each window reads its own input, context included)",
            f"write    {bytes_text(self.output_bytes)} (with the pyramid)",
        ] + ([f"placed   {placement_text(self.placement)}"] if self.from_file else [])
        rate = f"{self.seconds_per_window:.3g} s per window ({self.rate_source})" if self.seconds_per_window else ""
        return "\n".join(lines + time_lines(self.seconds, self.workers, rate, "a model_profile.csv (--profile) or "
                                                                           "time one window now (--measure)"))


def plan_model_job(model: str | None = None, *, model_file: str | Path | None = None,
                   model_kwargs: dict[str, Any] | str | None = None, weights: str | Path | None = None,
                   trust_imports: Sequence[str] = (), dims: int = 3, in_channels: int = 1,
                   activation: str | None = None, output_tensor: str | int | None = None,
                   weights_format: str | None = None, contract: dict[str, Any] | None = None,
                   input: str | None = None, shape: Sequence[int] | None = None, input_dtype: str = "uint8",
                   workers: int = 1, window: Sequence[int] | int | None = None,
                   blocks: Sequence[int] | int | None = None, mode: str = "auto", overlap: float = 0.5,
                   tta: str | Sequence[int] | None = None, stored_channels: int | None = None,
                   stored_dtype: str = "float32", profile_csv: str | Path | None = None, measure: bool = False,
                   memory_limit: int | None = None, device: str | None = None,
                   precision: str = "float32") -> ModelPlan:
    """Plan ``densepred predict --model ...`` over ``input`` (or an image of ``shape``) without
    running it; the model's fields are :class:`~densepred.PredictJob`'s, ``window`` its
    ``--tile`` and ``blocks`` its ``--block``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DensePredError(f"workers = {workers!r} is invalid; expected a positive integer")
    net, image, itemsize = sized_model(
        {"model": model, "model_file": model_file, "model_kwargs": model_kwargs, "weights": weights,
         "trust_imports": tuple(trust_imports), "dims": dims, "in_channels": in_channels, "activation": activation,
         "output_tensor": output_tensor, "weights_format": weights_format, "contract": contract},
        input, shape, input_dtype, "plan")
    run = ModelRun.create(net, ChannelFirst(image, net.in_channels, net.dims), mode, window, overlap, tta, None,
                          device, Prepared((), ()), memory_limit=memory_limit, window_given=window is not None,
                          precision=precision)
    channels = stored_channels or run.written.channels
    per_block = BLEND_SHARDS_PER_BLOCK if blocks is None and run.mode == "blend" else blocks
    grid = BlockPlan.create(run.output_shape, run.shard, tiles_per_block(per_block, len(run.window)),
                            (1,) * len(run.window))
    windows = window_count(run)
    placement = planned_placement(input, len(run.output_shape))
    voxel = None if placement is None else tuple(  # the output's voxels, at the model's scale
        v * down / up for v, (up, down) in zip(placement.voxel_size, run.contract.pairs, strict=True))
    output_bytes = sum(math.prod(level.shape) for level in pyramid(run.output_shape, voxel)) * channels
    seconds, source = _rate(run, profile_csv, measure)
    return ModelPlan(model or str(model_file), run.output_shape, channels, run.window, run.mode, windows,
                     len(run.flips), grid, windows * math.prod(run.window) * net.in_channels * itemsize,
                     output_bytes * np.dtype(stored_dtype).itemsize, seconds, source, workers, placement,
                     input is not None)


def sized_model(fields: dict[str, Any], input: str | None, shape: Sequence[int] | None, input_dtype: str,
                what: str) -> tuple[ForeignNet, Any, int]:
    """The net of a model named by :class:`PredictJob`'s model ``fields``, the image it is to
    predict (``input``'s array, or one of ``shape`` that takes no memory) and the image's bytes
    per voxel, for a plan or a profile (``what``). A model that is not a bioimage.io one gets no
    activation unless one is given: what the logits become changes neither the windows nor
    their time much, and a one-channel model would be refused a softmax."""
    if (input is None) == (shape is None):
        raise DensePredError(f"a model's {what} needs the image it will predict: give its file (--input SPEC) or its "
                             "shape (--shape Z,Y,X), one of them")
    net = model_net(fields, what)
    if input is not None:
        image = open_array(ArraySpec.parse(input))
        return net, image, np.dtype(image.dtype).itemsize
    return net, shaped_image(shape, net.in_channels), _itemsize(input_dtype)


def model_net(fields: dict[str, Any], what: str) -> ForeignNet:
    """The net of a model named by :class:`PredictJob`'s model ``fields`` (see :func:`sized_model`)."""
    if fields.get("model") is None and fields.get("model_file") is None:
        raise DensePredError(f"give the model to {what}: --model MODULE:CLASS or --model-file FILE")
    if fields.get("activation") is None and not is_rdf(fields.get("model_file")):
        fields = {**fields, "activation": "identity"}
    return job_net(PredictJob(config=None, input="", output="", **fields))[1]


def window_count(run: ModelRun) -> int:
    """The windows ``run`` computes: its exact windows, or its blend windows that start inside
    the output."""
    if run.mode == "exact":
        return math.prod(len(axis) for axis in run.exact_axes())
    return math.prod(sum(s < n for s in axis) for axis, n in zip(run.blend_axes(), run.output_shape, strict=True))


def shaped_image(shape: Sequence[int], channels: int) -> np.ndarray:
    """An image of spatial ``shape`` that takes no memory: only its shape is used."""
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 1:
        raise DensePredError(f"shape {list(shape)} is invalid; expected positive sizes like 256,512,512")
    return np.broadcast_to(np.float32(0.5), (channels, *shape) if channels > 1 else shape)


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        raise DensePredError(f"input dtype {dtype!r} is invalid; expected e.g. uint8, uint16, float32") from None


def _rate(run: ModelRun, profile_csv: str | Path | None, measure: bool) -> tuple[float | None, str]:
    precision = run.precision.name
    if profile_csv is not None:
        return seconds_from_profile(profile_csv, run.window, precision)
    if not measure:
        return None, ""
    seconds, _ = timed_window(run, run.window, 1)
    if precision != "float32":  # as the profile: measured against float32 on the same window, and kept
        reduced, run.precision = run.precision, FLOAT32
        float32_seconds, _ = timed_window(run, run.window, 1)
        run.precision = reduced
        voxels = math.prod(run.output_window)
        how = f"densepred plan --model --measure, window {shape_text(run.window)}"
        remember(model_key(run.net), run.device, precision, voxels / seconds, voxels / float32_seconds, how,
                 MODEL_AGAIN)
        if seconds > float32_seconds:
            raise DensePredError(slower_message(precision, device_name(run.device), voxels / seconds,
                                                voxels / float32_seconds, how, MODEL_AGAIN))
    return seconds, f"one window timed now, {precision}"


def seconds_from_profile(path: str | Path, window: Sequence[int], precision: str) -> tuple[float, str]:
    """Seconds per window from the ``model_profile.csv`` row of ``window`` in ``precision``."""
    table = read_profile(path, ("precision", "window", "seconds_per_window", "status"),
                         "a model's model_profile.csv (densepred profile --model ... --out DIR writes one; a "
                         "network's profile.csv has tiles, not windows)")
    rows = [r for r in table if r.get("status") == "ok" and r.get("precision") == precision]
    own = [r for r in rows if r.get("window") == shape_text(window)]
    if not own:
        measured = ", ".join(r["window"] for r in rows if "window" in r) or "none"
        raise DensePredError(f"{path} has no {precision} row for window {shape_text(window)} (its windows: "
                             f"{measured}); give one of them as --tile, or time this one with --measure")
    return float(own[0]["seconds_per_window"]), f"{path}, this window"

