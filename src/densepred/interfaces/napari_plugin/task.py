"""One prediction for napari, without Qt: run it (in any thread), report progress, cancel, make layers.

:class:`PredictionTask` is what the widget's worker thread runs. Its ``run`` returns napari
layer-data tuples ``(data, kwargs, layer_type)`` that lie exactly on the input layer: the
input's scale, and its translate moved by the voxel that output voxel 0 is centred on.
:meth:`PredictionTask.cancel` stops the run before its next batch of tiles; an in-memory run
then returns nothing, and a file output stays unfinished and resumable (Predict again
continues it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Cancelled, DensePredError
from .reader import ome_levels
from .request import PredictRequest

log = logging.getLogger("densepred")

LayerData = tuple[Any, dict[str, Any], str]
REPORT_INTERVAL = 0.1  # seconds between progress reports to the GUI


@dataclass(frozen=True)
class ProgressReport:
    """What the progress bar shows: the stage, the fraction done, and a line with rate and time left."""

    stage: str
    fraction: float
    text: str


@dataclass(frozen=True)
class Outcome:
    """What a run ended with: its layers, or the one line to notify (failure or cancel)."""

    layers: list[LayerData]
    message: str | None = None
    cancelled: bool = False


class PredictionTask:
    """``run()`` predicts ``request``; ``cancel()`` (from any thread) stops it within one batch."""

    def __init__(self, request: PredictRequest, on_progress: Callable[[ProgressReport], None] | None = None):
        self.request = request
        self.on_progress = on_progress
        self._cancel = threading.Event()
        self._last_report = 0.0

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def outcome(self) -> Outcome:
        """:meth:`run`, with every failure turned into its one-line message (the worker's function:
        napari would show a raised exception as a traceback)."""
        try:
            return Outcome(self.run())
        except Cancelled:
            return Outcome([], self._cancel_message(), cancelled=True)
        except Exception as exc:
            if not isinstance(exc, DensePredError | OSError | MemoryError):
                log.exception("prediction failed")
            return Outcome([], describe_failure(exc))

    def _cancel_message(self) -> str:
        if not self.request.to_file:
            return "prediction cancelled"
        return (f"prediction cancelled; {self.request.output_path()} is unfinished: press Predict again "
                "to continue it")

    def run(self) -> list[LayerData]:
        """The result layers; raises :class:`Cancelled` or :class:`DensePredError`."""
        layers = self._to_file() if self.request.to_file else self._in_memory()
        return layers if self.request.image.time is None else [at_time_point(layer, self.request) for layer in layers]

    def _observe(self, progress: Any) -> None:
        if self._cancel.is_set():
            raise Cancelled("prediction cancelled")
        now = time.monotonic()
        if self.on_progress is None or (now - self._last_report < REPORT_INTERVAL and progress.done < progress.total):
            return
        self._last_report = now
        fraction = progress.done / progress.total if progress.total else 1.0
        self.on_progress(ProgressReport(progress.desc, fraction, progress.line(progress.seconds)))

    def _in_memory(self) -> list[LayerData]:
        from ...running import output_origin, predict_dense

        req = self.request
        net = build_net_for(req)
        probabilities = predict_dense(net, req.image.data, mirror=req.mirror, tile_shape=req.tile,
                                      mode=req.mode, device=req.device, precision=req.precision,
                                      memory_limit=req.memory_limit,
                                      progress=self._observe)
        origin = output_origin(net, req.image.data, req.mirror)
        if req.labels:
            return [labels_layer(np.argmax(probabilities, axis=0).astype(label_dtype(len(probabilities))), req,
                                 origin)]
        if req.classes is not None:
            _check_classes(req.classes, len(probabilities))
            probabilities = probabilities[req.classes[0] if len(req.classes) == 1 else list(req.classes)]
        return [probability_layer(probabilities, req, origin)]

    def _to_file(self) -> list[LayerData]:
        from ...running import predict_to_file

        req = self.request
        output = req.output_path()
        job = file_job(req, output, resume=output.exists(), progress=self._observe)
        result = predict_to_file(job)
        levels = ome_levels(output)
        if req.labels:
            return [labels_layer(_one_or_pyramid(levels), req, result.origin)]
        if len(levels[0].shape) == len(result.origin) + 1 and levels[0].shape[0] == 1:
            levels = [level[0] for level in levels]  # one chosen class: no class axis
        return [probability_layer(_one_or_pyramid(levels), req, result.origin)]


def build_net_for(req: PredictRequest) -> Any:
    """The densepred net of ``req.config`` (``req.weights``, else its LAST), or the model from elsewhere."""
    if req.model is not None:
        from ...networks import from_torch
        from ...networks.bioimageio import from_bioimageio, is_rdf
        from ...networks.loading import load_model

        if is_rdf(req.model_file):
            return from_bioimageio(req.model_file)
        model = load_model(req.model_class, req.model_kwargs, req.weights, req.model_file)
        return from_torch(model, dims=req.dims, in_channels=req.in_channels)
    from ...config import load_config
    from ...networks import config_last, create_prediction_net

    cfg = load_config(req.config)
    if cfg.network.dims == 0:
        raise DensePredError(f"{req.config} is a net for feature vectors (dims = 0); the widget predicts images")
    weights = req.weights if req.weights is not None else config_last(cfg)
    return create_prediction_net(cfg, param_file=weights)


def file_job(req: PredictRequest, output: Path, resume: bool, progress: Any) -> Any:
    """The :class:`~densepred.running.PredictJob` of a file-to-file request."""
    from ...running import PredictJob

    source = req.image.file
    if source is None:
        raise DensePredError(f"layer '{req.image.name}' is not backed by a file (zarr, or N5 or HDF5 opened by "
                             "densepred's reader); predict it in memory "
                             "(leave the output file blank) or save it as OME-Zarr first")
    common = {"input": source, "output": str(output), "weights": req.weights, "tile": req.tile,
              "device": req.device, "precision": req.precision, "argmax": req.labels, "classes": req.classes,
              "resume": resume,
              "progress": progress, "memory_limit": req.memory_limit}
    if req.model is not None:
        return PredictJob(config=None, model=req.model_class, model_file=req.model_file,
                          model_kwargs=req.model_kwargs, dims=req.dims, in_channels=req.in_channels,
                          mode=req.mode, **common)
    return PredictJob(config=req.config, mode=None if req.mode == "auto" else req.mode, mirror=req.mirror,
                      **common)


def _one_or_pyramid(levels: list[Any]) -> Any:
    return levels[0] if len(levels) == 1 else levels


def probability_layer(data: Any, req: PredictRequest, origin: tuple[int, ...]) -> LayerData:
    """Probabilities as an image layer: ``(*S)`` for one class, else ``(classes, *S)``."""
    shape = data[0].shape if isinstance(data, list) else data.shape
    lead = len(shape) - len(origin)
    classes = "" if req.classes is None else " " + ",".join(map(str, req.classes))
    kwargs = {"name": f"{req.image.name} probabilities{classes}", "contrast_limits": (0.0, 1.0),
              "colormap": "magma", "blending": "additive", "metadata": {"densepred": _metadata(req)},
              **placement(req, origin, lead)}
    if isinstance(data, list):
        kwargs["multiscale"] = True
    return data, kwargs, "image"


def labels_layer(data: Any, req: PredictRequest, origin: tuple[int, ...]) -> LayerData:
    kwargs = {"name": f"{req.image.name} labels", "metadata": {"densepred": _metadata(req)},
              **placement(req, origin, 0)}
    if isinstance(data, list):
        kwargs["multiscale"] = True
    return data, kwargs, "labels"


def placement(req: PredictRequest, origin: tuple[int, ...], lead: int) -> dict[str, tuple[float, ...]]:
    """``scale`` and ``translate`` of the output: the input's, moved by ``origin`` voxels; ``lead``
    axes (classes) in front get scale 1 and translate 0."""
    n = len(origin)
    scale, translate = req.image.scale[-n:], req.image.translate[-n:]
    moved = tuple(t + o * s for t, o, s in zip(translate, origin, scale, strict=True))
    return {"scale": (1.0,) * lead + tuple(scale), "translate": (0.0,) * lead + moved}


def at_time_point(layer: LayerData, req: PredictRequest) -> LayerData:
    """A result of one time point of a layer, laid on that layer's axes so the viewer shows it
    at that time only: each axis in front of z, y, x has one element (time's at the time point),
    but the channel axis, which holds the classes; a class axis without one goes in front."""
    data, kwargs, kind = layer
    image, levels = req.image, data if isinstance(data, list) else [data]
    classes = levels[0].ndim - 3
    index: list[slice | None] = []
    scale: list[float] = []
    translate: list[float] = []
    for i, axis in enumerate(image.axes[:-3]):
        takes_classes = axis == "C" and classes > 0
        index.append(slice(None) if takes_classes else None)
        scale.append(1.0 if takes_classes else image.scale[i])
        translate.append(0.0 if takes_classes else image.translate[i] + (image.time if axis == "T" else 0) * scale[-1])
    if classes and "C" not in image.axes[:-3]:
        index, scale, translate = [slice(None), *index], [1.0, *scale], [0.0, *translate]
    placed = [level[(*index, Ellipsis)] for level in levels]  # NumPy arrays, or dask's of a file
    kwargs = {**kwargs, "name": kwargs["name"].replace(image.name, f"{image.name} t={image.time}", 1),
              "scale": (*scale, *kwargs["scale"][-3:]), "translate": (*translate, *kwargs["translate"][-3:])}
    return (placed if isinstance(data, list) else placed[0]), kwargs, kind


def label_dtype(classes: int) -> np.dtype:
    return np.dtype(np.uint8 if classes <= 256 else np.uint16 if classes <= 65536 else np.uint32)


def describe_failure(exc: BaseException) -> str:
    """The one line a notification shows for ``exc``."""
    if isinstance(exc, Cancelled):
        return "prediction cancelled"
    text = " ".join(str(exc).split())
    if isinstance(exc, DensePredError):
        return text
    if isinstance(exc, MemoryError):
        return "out of memory; set a smaller memory limit or tile, or predict file to file"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_classes(classes: tuple[int, ...], n: int) -> None:
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise DensePredError(f"classes {list(bad)} do not exist; this net has classes 0 to {n - 1}")


def _metadata(req: PredictRequest) -> dict[str, Any]:
    return {"config": None if req.config is None else str(req.config), "model": req.model,
            "weights": None if req.weights is None else str(req.weights), "mirror": req.mirror,
            "source": req.image.name, "file": None if not req.to_file else str(req.output_path())}


def notify(outcome: Outcome) -> None:
    """Show a failure or cancel as a napari notification (one line, no traceback)."""
    from napari.utils.notifications import show_error, show_info

    if outcome.message is not None:
        (show_info if outcome.cancelled else show_error)(outcome.message)


__all__ = ["LayerData", "Outcome", "PredictionTask", "ProgressReport", "at_time_point", "build_net_for",
           "describe_failure", "notify", "placement"]
