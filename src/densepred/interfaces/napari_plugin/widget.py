"""The napari dock widget: pick a net and an image, Predict, watch the progress, Cancel.

A thin magicgui form over :mod:`.request` and :mod:`.task` (which hold the logic and are
tested without Qt). The prediction runs in a worker thread; progress reaches the GUI thread
through ``ensure_main_thread``; failures and cancels are one-line notifications.
"""

from typing import Any

import napari.layers
import napari.viewer
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from superqt.utils import ensure_main_thread

from ...config.schema import PRECISIONS
from ...errors import DensePredError
from .request import OUTPUTS, ImageSource, request_from_fields, shown_time_point
from .sample import CONFIG_KEY
from .task import Outcome, PredictionTask, ProgressReport, describe_failure, notify

SOURCES = ("densepred config", "model from elsewhere")
BAR_STEPS = 1000


class PredictWidget(Container):
    """Dense prediction of the chosen image layer; the result is added as a layer on top of it.
    Of a layer of several time points of volumes, the time point the viewer shows is predicted
    and its result shown at that time."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):  # or a ViewerModel (tests)
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.task: PredictionTask | None = None
        self.last_report: ProgressReport | None = None
        self.image = ComboBox(choices=self._image_layers, label="image")
        self.source = ComboBox(choices=SOURCES, value=SOURCES[0], label="net")
        self.config = FileEdit(mode="r", filter="*.toml", label="config")
        self.weights = FileEdit(mode="r", filter="*.safetensors *.pt *.pth", label="weights",
                                tooltip="blank: the config's LAST weights")
        self.model = LineEdit(label="model", tooltip="package.module:Class, path/to/file.py:Class or model.pt2")
        self.model_kwargs = LineEdit(label="model kwargs", tooltip='JSON, e.g. {"spatial_dims": 3}')
        self.dims = ComboBox(choices=[3, 2], value=3, label="model dims")
        self.in_channels = LineEdit(value="1", label="in channels")
        self.mode = ComboBox(choices=["auto", "mfp", "dilated", "naive"], value="auto", label="mode")
        self.tile = LineEdit(label="tile", tooltip="input tile z,y,x; blank: the config's [prediction] tile_shape")
        self.mirror = CheckBox(value=True, label="mirror", tooltip="pad by reflection so the output covers the image")
        self.device = ComboBox(choices=_devices(), value="auto", label="device")
        self.precision = ComboBox(choices=list(PRECISIONS), value="float32", label="precision",
                                  tooltip="float32 is exact; bfloat16, float16 are faster on GPUs (docs/PRECISION.md)")
        self.memory_limit = LineEdit(label="memory limit", tooltip="e.g. 8G; blank: half the available RAM")
        self.output = ComboBox(choices=OUTPUTS, value=OUTPUTS[0], label="output")
        self.classes = LineEdit(label="classes", tooltip="e.g. 1; blank: every class")
        self.output_file = FileEdit(mode="w", filter="*.zarr", label="output file",
                                    tooltip="blank: in memory, or beside the input when it is a zarr file")
        self.predict = PushButton(text="Predict")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(min=0, max=BAR_STEPS, value=0, visible=False, label="")
        self.status = Label(value="", label="")
        self.extend([self.image, self.source, self.config, self.weights, self.model, self.model_kwargs, self.dims,
                     self.in_channels, self.mode, self.tile, self.mirror, self.device, self.precision,
                     self.memory_limit, self.output, self.classes, self.output_file, self.predict, self.cancel,
                     self.bar, self.status])
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.image.reset_choices)
        self.source.changed.connect(self._show_source_fields)
        self.image.changed.connect(self._config_from_layer)
        self.config.changed.connect(self._describe_config)
        self.predict.changed.connect(self.start)
        self.cancel.changed.connect(self.stop)
        self._show_source_fields()
        self._config_from_layer()

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def fields(self) -> dict[str, Any]:
        """The form's values, as :func:`request_from_fields` takes them."""
        own = self.source.value == SOURCES[0]
        return {"config": self.config.value if own else None, "weights": self.weights.value,
                "model": None if own else self.model.value, "model_kwargs": self.model_kwargs.value,
                "dims": self.dims.value, "in_channels": self.in_channels.value, "mode": self.mode.value,
                "tile": self.tile.value, "mirror": self.mirror.value, "device": self.device.value,
                "precision": self.precision.value,
                "memory_limit": self.memory_limit.value, "output": self.output.value,
                "classes": self.classes.value, "output_file": self.output_file.value}

    def start(self) -> None:
        if self.task is not None:
            return
        try:
            if self.image.value is None:
                raise DensePredError("no image layer: open an image (or File > Open Sample > densepred) first")
            layer = self.image.value  # of a time series of volumes, the time point the viewer shows
            image = ImageSource.from_layer(layer, shown_time_point(self.viewer, layer))
            request = request_from_fields(image, self.fields())
        except DensePredError as exc:
            notify(Outcome([], describe_failure(exc)))
            return
        from napari.qt.threading import create_worker

        self.task, self.last_report = PredictionTask(request, on_progress=self._report), None
        worker = create_worker(self.task.outcome, _start_thread=False)
        worker.returned.connect(self._finish)
        self._busy(True, "starting")
        worker.start()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.status.value = "cancelling after this batch"

    @ensure_main_thread
    def _report(self, report: ProgressReport) -> None:
        self.bar.value = round(report.fraction * BAR_STEPS)
        self.bar.label = report.stage
        self.status.value = report.text
        self.last_report = report

    def _finish(self, outcome: Outcome) -> None:
        self.task = None
        done = "done" if self.last_report is None else f"done; {self.last_report.text}"
        self._busy(False, outcome.message or done)
        for data, kwargs, layer_type in outcome.layers:
            self.viewer.add_layer(napari.layers.Layer.create(data, kwargs, layer_type))
        notify(outcome)

    def _busy(self, busy: bool, text: str) -> None:
        self.predict.enabled, self.cancel.enabled, self.bar.visible = not busy, busy, busy
        self.bar.value = 0
        self.status.value = text

    def _show_source_fields(self) -> None:
        own = self.source.value == SOURCES[0]
        for widget in (self.config, self.mirror):
            widget.visible = own
        for widget in (self.model, self.model_kwargs, self.dims, self.in_channels):
            widget.visible = not own
        self.mode.choices = ["auto", "mfp", "dilated", "naive"] if own else ["auto", "exact", "blend"]

    def _config_from_layer(self) -> None:
        """Preselect the config a layer names in its metadata (the sample data does)."""
        layer = self.image.value
        config = getattr(layer, "metadata", {}).get(CONFIG_KEY) if layer is not None else None
        if config and str(self.config.value) in ("", "."):
            self.config.value = config

    def _describe_config(self) -> None:
        from .request import describe_config

        self.status.value = describe_config(self.config.value)


def _devices() -> list[str]:
    import torch

    return ["auto", "cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
