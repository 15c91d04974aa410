"""``densepred profile --model``: the fastest exact window of a model written elsewhere, measured.

An exact window recomputes its context on every side, so a larger window wastes less of its
forward; but a forward's time per voxel is not constant (caches, a GPU's occupancy, the
kernels cuDNN picks per shape), so the largest window the memory budget holds, which
``predict`` takes by default, is not always the fastest. This profile measures a ladder of
exact windows (:func:`~densepred.running.planning.model_window.window_ladder`): from the
smallest exact window to that default, each holding at least 1.25 times the voxels of the
last. Each window gets a warm-up forward and then ``repeats`` timed ones (the median counts)
of random input, through the path a prediction takes: the run's precision and memory format,
the activation, the copy to the host; files are not read. A window's seconds times the
windows an image of the given shape needs of it is the image's compute time; the fastest
window is recommended as ``--tile``. Each window's peak memory is measured beside its
estimate: on the CPU each window runs in a fresh process (:mod:`.model_window_process`: its
peak resident set, and a window the machine cannot hold reported as out of memory), on CUDA
the allocator's peak.

A precision other than float32 is also timed in float32 on its fastest window, and the
verdict is kept (:mod:`densepred.networks.precision_speed`): predicting with this model in a
precision measured slower than float32 is refused on this machine until a measure finds it
faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import DensePredError
from ...files import atomic_write_text
from ...io import ChannelFirst
from ...networks.devices import resolve_device
from ...networks.memory_budget import bytes_limit
from ...networks.precision import precision_for
from ...networks.precision_speed import MODEL_AGAIN, model_key, remember
from ...system import large_blocks_returned
from ..compute.model_run import ModelRun
from ..compute.preprocess import Prepared
from ..compute.windows import timed_window
from ..planning.model_window import LadderStep, window_ladder
from .model_window_process import measure_in_process, model_for
from .report import check_measure_budget, check_out_folder, shape_text

CSV_NAME = "model_profile.csv"
CSV_COLUMNS = ["precision", "window", "windows", "seconds_per_window", "image_seconds", "voxels_per_s",
               "estimated_bytes", "peak_bytes", "heap_kept", "status"]


@dataclass(frozen=True)
class WindowRow:
    """One measured window: median seconds per forward; ``peak_bytes`` the peak over the run's
    baseline (the CUDA allocator's, or on the CPU the resident set's; None where the system
    does not tell); ``status`` ``ok`` or ``oom``."""

    precision: str
    window: tuple[int, ...]
    windows: int
    seconds: float
    estimated_bytes: int
    peak_bytes: int | None = None
    status: str = "ok"
    heap_kept: bool = True  # freed heap blocks kept for the next window, or returned (slower)

    @property
    def image_seconds(self) -> float:
        """The image's compute time: its windows, one after another."""
        return self.windows * self.seconds

    def csv_values(self, image_voxels: int) -> list[str]:
        rate = image_voxels / self.image_seconds if self.status == "ok" else 0.0
        return [self.precision, "x".join(map(str, self.window)), str(self.windows), f"{self.seconds:.6g}",
                f"{self.image_seconds:.6g}", f"{rate:.6g}", str(self.estimated_bytes),
                "" if self.peak_bytes is None else str(self.peak_bytes), str(self.heap_kept).lower(), self.status]


@dataclass
class ModelProfile:
    """The measured windows of a model over an image of ``image_shape`` (spatial)."""

    device: str
    precision: str
    memory_limit: int | None
    image_shape: tuple[int, ...]
    default_window: tuple[int, ...]  # what predict takes without --tile (one of the ladder's)
    rows: list[WindowRow] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    csv_path: Path | None = None

    @property
    def image_voxels(self) -> int:
        return math.prod(self.image_shape)

    def rate(self, row: WindowRow) -> float:
        """Image voxels per second with ``row``'s window."""
        return self.image_voxels / row.image_seconds

    @property
    def best(self) -> WindowRow | None:
        """The fastest window measured in the profile's precision."""
        done = [r for r in self.rows if r.status == "ok" and r.precision == self.precision]
        return min(done, key=lambda r: r.image_seconds) if done else None

    def recommendation(self) -> str:
        best = self.best
        if best is None:
            return "no window was measured"
        text = (f"fastest: window {shape_text(best.window)}, {self.rate(best) / 1e6:.3g} Mvox/s over a "
                f"{shape_text(self.image_shape)} image ({best.image_seconds:.3g} s of compute); ")
        default = [r for r in self.rows if r.window == self.default_window and r.precision == self.precision
                   and r.status == "ok"]
        if best.window == self.default_window:
            return text + "it is the window predict takes without --tile"
        text += f"predict with --tile {','.join(map(str, best.window))}"
        if default:
            text += (f" (predict's default window, {shape_text(self.default_window)}, "
                     f"{self.rate(default[0]) / 1e6:.3g} Mvox/s)")
        return text

    def csv_text(self) -> str:
        rows = (",".join(r.csv_values(self.image_voxels)) for r in self.rows)
        return "\n".join([",".join(CSV_COLUMNS), *rows]) + "\n"


def profile_model(model: str | None = None, *, model_file: str | Path | None = None,
                  model_kwargs: dict[str, Any] | str | None = None, weights: str | Path | None = None,
                  trust_imports: Sequence[str] = (), dims: int = 3, in_channels: int = 1,
                  activation: str | None = None, output_tensor: str | int | None = None,
                  weights_format: str | None = None, contract: dict[str, Any] | None = None,
                  input: str | None = None, shape: Sequence[int] | None = None, device: str | None = None,
                  precision: str = "float32", memory_limit: int | None = None, max_seconds: float = 300.0,
                  repeats: int = 3, out: str | Path | None = None, progress: bool = True,
                  peaks: bool = True) -> ModelProfile:
    """Measure a model's exact windows for an image, and return (and with ``out``, save) the table.

    The model is named as for ``densepred predict --model`` (:class:`~densepred.PredictJob`'s
    fields of the same names). The image is ``input`` (a file spec; only its shape is read) or
    its spatial ``shape``. ``memory_limit``: as for predict; the ladder ends with the largest
    window it holds, and holds predict's default window. ``max_seconds``: a window whose
    predicted time would pass it is not started. ``activation``: as predict's; by default none
    for a model that is not a bioimage.io one (a one-channel model would be refused a softmax),
    which changes a window's time little. ``out``: a folder for ``model_profile.csv``.
    ``peaks=False``: on the CPU, each window is timed in this process and its peak memory not
    measured (faster by a process start per window).

    Example:
        >>> result = densepred.profile_model("monai.networks.nets:BasicUNet", shape=(256, 512, 512),
        ...                                  model_kwargs={"spatial_dims": 3})      # doctest: +SKIP
        >>> result.best.window                                                      # doctest: +SKIP
    """
    check_measure_budget(max_seconds, repeats)
    check_out_folder(out)
    memory_limit = bytes_limit(memory_limit)
    fields = {"model": model, "model_file": model_file, "model_kwargs": model_kwargs, "weights": weights,
              "trust_imports": tuple(trust_imports), "dims": dims, "in_channels": in_channels, "activation": activation,
              "output_tensor": output_tensor, "weights_format": weights_format, "contract": contract}
    net, image = model_for(fields, input, shape)
    if not net.contract.exact:
        raise DensePredError(f"this model cannot be tiled exactly ({net.contract.reason}): it blends windows of "
                             "its own size (--tile), so there are no exact windows to profile")
    resolved = precision_for(precision, resolve_device(device)).name
    source = ChannelFirst(image, net.in_channels, net.dims)
    with large_blocks_returned():
        run = ModelRun.create(net, source, "exact", None, 0.0, None, None, device, Prepared((), ()),
                              memory_limit=memory_limit, window_given=False)
    ladder = window_ladder(run, memory_limit)
    result = ModelProfile(str(run.device), resolved, memory_limit, tuple(run.source.spatial_shape),
                          tuple(run.window))
    run.precision = precision_for(resolved, run.device)
    measure = WindowMeasure(run, fields, memory_limit, repeats, apart=peaks and run.device.type == "cpu")
    _walk(run, ladder, result, time.monotonic() + max_seconds, repeats, progress, measure)
    if resolved != "float32" and result.best is not None:
        _against_float32(run, result, ladder, measure)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        result.csv_path = folder / CSV_NAME
        atomic_write_text(result.csv_path, result.csv_text())
    return result


def _walk(run: ModelRun, ladder: list[LadderStep], result: ModelProfile, deadline: float, repeats: int,
          progress: bool, measure: WindowMeasure) -> None:
    """The ladder from its smallest window, until it ends, a window runs out of memory, or the
    next one's predicted time passes the deadline."""
    from tqdm import tqdm

    bar = tqdm(total=len(ladder), unit="window", leave=False, disable=not progress)
    try:
        last: WindowRow | None = None
        for step in ladder:
            if last is not None:
                predicted = last.seconds * math.prod(step.window) / math.prod(last.window) * (1 + repeats)
                if time.monotonic() + predicted > deadline:
                    result.stops.append(f"{shape_text(step.window)} would take about {predicted:.0f} s, past the time "
                                        "budget (--max-seconds)")
                    break
            bar.set_description(shape_text(step.window))
            row = measure(step, run.precision.name)
            result.rows.append(row)
            bar.update()
            if row.status != "ok":
                result.stops.append(f"{shape_text(step.window)} ran out of memory")
                break
            last = row
    finally:
        bar.close()


@dataclass
class WindowMeasure:
    """Each window of ``run``'s model measured as a prediction with that window would run it:
    ``apart`` (on the CPU) in a process of its own (:mod:`.model_window_process`: its peak
    memory too), else here (on CUDA the allocator's peak is the window's own)."""

    run: ModelRun
    fields: dict[str, Any]
    memory_limit: int | None
    repeats: int
    apart: bool

    def __call__(self, step: LadderStep, precision: str) -> WindowRow:
        run = self.run
        if not self.apart:
            run.precision = precision_for(precision, run.device)
            return measure_here(run, step, self.repeats)
        reply = measure_in_process(self.fields, run.source.spatial_shape, step.window, precision, self.memory_limit,
                                   step.heap_kept, self.repeats)
        if reply["status"] != "ok":
            return _row(step, precision)
        return _row(step, precision, reply["seconds"], reply["peak_bytes"])


def measure_here(run: ModelRun, step: LadderStep, repeats: int) -> WindowRow:
    """``step``'s window timed here: a warm-up forward, then ``repeats`` (the median), with the
    heap as a prediction with that window has it (freed blocks kept or returned)."""
    with large_blocks_returned(not step.heap_kept):
        return _timed(run, step, repeats)


def _timed(run: ModelRun, step: LadderStep, repeats: int) -> WindowRow:
    try:
        seconds, peak = timed_window(run, step.window, repeats)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return _row(step, run.precision.name)
    return _row(step, run.precision.name, seconds, peak)


def _row(step: LadderStep, precision: str, seconds: float | None = None, peak: int | None = None) -> WindowRow:
    """``step``'s row: measured in ``seconds`` (and ``peak`` bytes), or out of memory without them."""
    if seconds is None:
        return WindowRow(precision, step.window, step.windows, math.inf, step.estimated_bytes, None, "oom",
                         step.heap_kept)
    return WindowRow(precision, step.window, step.windows, seconds, step.estimated_bytes, peak,
                     heap_kept=step.heap_kept)


def _against_float32(run: ModelRun, result: ModelProfile, ladder: list[LadderStep], measure: WindowMeasure) -> None:
    """float32 on the fastest window of the profile's precision, a row of its own, and the
    verdict kept for predictions of this model on this machine."""
    best = result.best
    assert best is not None, "called with a measured window"
    reduced = run.precision
    row = measure(next(step for step in ladder if step.window == best.window), "float32")
    run.precision = reduced
    result.rows.append(row)
    if row.status == "ok":
        remember(model_key(run.net), run.device, result.precision, result.rate(best), result.rate(row),
                 f"densepred profile --model, window {shape_text(best.window)}", MODEL_AGAIN)
