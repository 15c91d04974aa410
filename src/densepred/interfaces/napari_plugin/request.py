"""What the napari widget asks for, without Qt: the image behind a layer and the prediction settings.

The widget's text fields become a :class:`PredictRequest` through :func:`request_from_fields`,
which reports every mistake as one :class:`~densepred.errors.DensePredError` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...io.arrays import ArraySpec
from ...io.axes import AxesView, axis_letters, channel_first
from ...io.mrc import SUFFIXES as MRC_SUFFIXES
from ..values import parse_ints, parse_size

OUTPUTS = ("probabilities", "labels")
MODES = ("auto", "mfp", "dilated", "naive", "exact", "blend")
OWN_MODES = ("auto", "mfp", "dilated", "naive")
MODEL_MODES = ("auto", "exact", "blend")
MODEL_FILES = (".pt2", ".onnx", ".torchscript", ".yaml", ".yml", ".zip")  # model files, bioimage.io packages
SOURCE_KEY = "densepred_source"  # a layer's metadata: the array spec densepred's reader opened it from
CONTAINERS = (".zarr", ".n5", ".h5", ".hdf5", ".hdf", ".tif", ".tiff", ".npy", ".ims", *MRC_SUFFIXES)  # suffixes an
# output name drops


@dataclass(frozen=True)
class ImageSource:
    """A layer's full-resolution data and where it lies; ``file`` is the zarr array behind it, if
    any. Of a layer of several time points of volumes, ``time`` is the one taken and ``axes``
    the layer's axes (letters of ``TCZYX``), so the result can be placed at that time."""

    data: Any
    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    file: str | None = None
    time: int | None = None
    axes: str | None = None

    @classmethod
    def from_layer(cls, layer: Any, time: int | None = None) -> ImageSource:
        """The image of ``layer``; of a time series of volumes, its time point ``time`` (the
        widget passes the one the viewer shows, :func:`shown_time_point`)."""
        data = _full_resolution(layer)
        scale, translate = tuple(float(v) for v in layer.scale), tuple(float(v) for v in layer.translate)
        where = f"layer '{layer.name}'"
        if getattr(layer, "rgb", False):  # colour samples last: the channels of a 3- or 4-channel net
            return cls(channel_first(data, "ZYXS"[4 - data.ndim:], where), layer.name, scale, translate)
        # axes the layer names (napari-ome-zarr's t, c, z, y, x) put channels first, as for a file
        axes = _axes(layer)
        time = time if _volume_series_axis(data, axes) is not None else None
        image = channel_first(data, axes, where, time=time,
                              choose_time="show the time point to predict in the viewer and press Predict "
                                          "(or add it as a layer of its own: viewer.add_image(viewer.layers"
                                          f"['{layer.name}'].data[t]))")
        return cls(image, layer.name, scale, translate, file_behind(layer, image, time), time,
                   None if time is None else axes)


def shown_time_point(viewer: Any, layer: Any) -> int | None:
    """The time point of ``layer`` that ``viewer`` shows, when the layer is a time series of
    volumes (axes named, as napari-ome-zarr names them), else None."""
    data = _full_resolution(layer)
    axis = _volume_series_axis(data, _axes(layer))
    if axis is None:
        return None
    position = float(layer.world_to_data(viewer.dims.point)[axis])
    return min(max(round(position), 0), int(data.shape[axis]) - 1)


def _full_resolution(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _axes(layer: Any) -> str | None:
    """The axes a layer names, as letters of ``TCZYX`` (napari-ome-zarr's and densepred's reader's)."""
    return axis_letters(getattr(layer, "axis_labels", None))


def _volume_series_axis(data: Any, axes: str | None) -> int | None:
    """The time axis of ``data`` when it holds several time points of volumes whose spatial
    axes come last (the form a result can be placed back in), else None."""
    if axes is None or len(axes) != len(data.shape) or "T" not in axes or not axes.endswith("ZYX"):
        return None
    axis = axes.index("T")
    return axis if int(data.shape[axis]) > 1 else None


def file_behind(layer: Any, data: Any, time: int | None = None) -> str | None:
    """The array spec of the file array a layer shows, when its data is that array whole (or
    its time point ``time``: the spec then names it, ``movie.zarr@t=3``): a zarr (OME-Zarr)
    array, or the N5 or HDF5 dataset densepred's reader opened it from."""
    import zarr

    from ...io import open_array

    opened = (getattr(layer, "metadata", None) or {}).get(SOURCE_KEY)
    candidates = [opened] if isinstance(opened, str) else []
    path = getattr(getattr(layer, "source", None), "path", None)
    if path and ".zarr" in str(path).lower():
        candidates.append(str(path).rstrip("/"))
    stored = data.array if isinstance(data, AxesView) else data
    if isinstance(stored, zarr.Array) and hasattr(stored.store, "root") and str(stored.store.root).endswith(".zarr"):
        candidates.append(f"{stored.store.root}:{stored.path}" if stored.path else str(stored.store.root))
    for spec in (c if time is None else f"{c}@t={time}" for c in candidates):
        try:
            array = open_array(spec)
        except (DensePredError, OSError, ValueError):
            continue
        if _without_leading_ones(array.shape) == _without_leading_ones(data.shape):
            return spec  # the same voxels (one channel of a t, c, z, y, x file split into layers by napari)
    return None


def _without_leading_ones(shape: Any) -> tuple[int, ...]:
    sizes = [int(n) for n in shape]
    while len(sizes) > 1 and sizes[0] == 1:
        sizes.pop(0)
    return tuple(sizes)


@dataclass(frozen=True)
class PredictRequest:
    """One press of Predict: the net (a config or a model from elsewhere), the image and the settings."""

    image: ImageSource
    config: Path | None = None
    weights: Path | None = None  # default: the config's LAST
    model: str | None = None  # package.module:Class, path/to/file.py:Class, a .pt2 file or a bioimage.io rdf.yaml
    model_kwargs: str | None = None  # JSON
    dims: int = 3  # of a model from elsewhere
    in_channels: int = 1
    mode: str = "auto"
    tile: tuple[int, ...] | None = None  # default: the config's [prediction] tile_shape
    mirror: bool = True
    device: str | None = None
    precision: str = "float32"  # the network's arithmetic (docs/PRECISION.md)
    memory_limit: int | None = None
    labels: bool = False  # argmax as a labels layer, else probabilities
    classes: tuple[int, ...] | None = None
    output_file: Path | None = None  # predict file to file (default for a layer backed by zarr)

    @property
    def model_file(self) -> str | None:
        """A model file (.pt2, .onnx, .torchscript) or a bioimage.io package (rdf.yaml, model.zip)."""
        return self.model if self.model is not None and self.model.endswith(MODEL_FILES) else None

    @property
    def model_class(self) -> str | None:
        return self.model if self.model is not None and not self.model.endswith(MODEL_FILES) else None

    @property
    def to_file(self) -> bool:
        return self.output_file is not None or self.image.file is not None

    def output_path(self) -> Path:
        """The output file: as given, else ``<input>[-<dataset>][-t<time>]-<net>[-labels].ome.zarr``
        beside the input (the dataset's path where the spec names one inside its file, so two
        datasets of one container get two outputs)."""
        if self.output_file is not None:
            return self.output_file
        if self.image.file is None:
            raise DensePredError("this layer is not backed by a file (zarr, or N5, HDF5 or precomputed opened by "
                                 "densepred's reader); give an output file to predict to disk")
        spec = ArraySpec.parse(self.image.file.split("@t=")[0])
        if spec.url is not None:
            raise DensePredError(f"{spec} is read over HTTP(S), where densepred writes nothing; give an output file "
                                 "to predict it to disk")
        base = spec.path.with_suffix("") if spec.path.suffix.lower() in CONTAINERS else spec.path
        base = base.with_suffix("") if base.suffix.lower() == ".ome" else base
        dataset = f"-{spec.key.replace('/', '-')}" if spec.key else ""
        net = Path(self.model.split(":")[-1]).stem if self.model else Path(self.config or "net").stem
        time = "" if self.image.time is None else f"-t{self.image.time}"
        return base.with_name(f"{base.name}{dataset}{time}-{net}{'-labels' if self.labels else ''}.ome.zarr")


def request_from_fields(image: ImageSource, fields: dict[str, Any]) -> PredictRequest:
    """A request from the widget's values (strings as typed, blanks for defaults)."""
    config, model = _path(fields.get("config")), _text(fields.get("model"))
    if (config is None) == (model is None):
        raise DensePredError("choose a densepred config (.toml) or a model from elsewhere "
                             "(package.module:Class, file.py:Class or model.pt2), one of them")
    dims = int(fields.get("dims") or 3)
    mode = fields.get("mode") or "auto"
    valid = MODEL_MODES if model else OWN_MODES
    if mode not in valid:
        raise DensePredError(f"mode {mode!r} is not for {'a model from elsewhere' if model else 'a densepred net'}; "
                             f"valid: {', '.join(valid)}")
    output = fields.get("output") or "probabilities"
    if output not in OUTPUTS:
        raise DensePredError(f"output {output!r} is invalid; valid: {', '.join(OUTPUTS)}")
    memory = _text(fields.get("memory_limit"))
    device = _text(fields.get("device"))
    return PredictRequest(
        image=image, config=config, weights=_path(fields.get("weights")), model=model,
        model_kwargs=_text(fields.get("model_kwargs")), dims=dims, in_channels=int(fields.get("in_channels") or 1),
        mode=mode, tile=parse_ints(_text(fields.get("tile")), None, "tile"),
        mirror=bool(fields.get("mirror", True)) and model is None, device=None if device == "auto" else device,
        precision=_text(fields.get("precision")) or "float32",
        memory_limit=parse_size(memory, "memory limit") if memory else None, labels=output == "labels",
        classes=parse_ints(_text(fields.get("classes")), None, "classes"),
        output_file=_path(fields.get("output_file")))


def describe_config(path: Any) -> str:
    """One line about the net a config describes (or what is wrong with it), for the widget."""
    from ...config import load_config, network_geometry

    config = _path(path)
    if config is None:
        return ""
    try:
        cfg = load_config(config)
        if cfg.network.dims == 0:
            return f"{cfg.name}: a net for feature vectors (dims = 0); the widget predicts images"
        geometry = network_geometry(cfg.network)
    except DensePredError as exc:
        return " ".join(str(exc).split())
    tile = cfg.prediction.tile_shape
    return (f"{cfg.name}: {cfg.network.dims}D, {cfg.network.n_classes} classes, field of view {list(geometry.fov)}; "
            f"tile {list(tile) if tile else 'by memory'}, mode {cfg.prediction.mode}")


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _path(value: Any) -> Path | None:
    text = _text(value)
    return None if text is None or text == "." else Path(text).expanduser()


__all__ = ["ImageSource", "PredictRequest", "describe_config", "file_behind", "request_from_fields",
           "shown_time_point"]
