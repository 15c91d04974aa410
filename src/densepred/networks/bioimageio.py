"""Models from the BioImage Model Zoo: an ``rdf.yaml`` with ``pytorch_state_dict`` weights.

The description is read and validated by ``bioimageio.spec`` (format 0.4 descriptions are
converted to 0.5), without network access: the architecture's ``.py`` file and the weights
must be local files beside the ``rdf.yaml``, or in the same zipped model package (unpacked
into a temporary folder removed at exit). The model's class is built with the description's
kwargs and its state dict loaded with ``torch.load(weights_only=True)``; the first input's
axes give the spatial dimensions and the channels.

The input's preprocessing is applied to every window (:mod:`densepred.networks.processing`,
statistics over the whole image). Of the output's postprocessing, a leading ``sigmoid`` or
``softmax`` becomes the net's activation (none: the outputs as the model returns them);
later steps (thresholds, rescaling) are not applied, and a warning names them.
``pip install 'densepred[bioimageio]'`` installs the reader.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..errors import DensePredError
from .processing import DTYPES, MEASURED, VOXELWISE, Step

log = logging.getLogger("densepred")

RDF_SUFFIXES = (".yaml", ".yml", ".zip")
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


@dataclass(frozen=True)
class ZooModel:
    """What densepred needs of a bioimage.io model description."""

    model: str  # path/to/file.py:Class or package.module:Class
    kwargs: dict[str, Any]
    weights: Path
    dims: int
    in_channels: int
    preprocessing: tuple[Step, ...] = ()
    activation: str = "identity"  # from a leading sigmoid or softmax postprocessing step
    not_applied: tuple[str, ...] = field(default=())  # later postprocessing steps


def is_rdf(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in RDF_SUFFIXES


def read_rdf(rdf: str | Path) -> ZooModel:
    """The architecture, kwargs, weights file and input axes of the model ``rdf`` describes."""
    path = Path(rdf).expanduser().resolve()
    descr = _description(_unpacked(path) if path.suffix.lower() == ".zip" else path)
    weights = descr.weights.pytorch_state_dict
    if weights is None:
        formats = [name for name, value in descr.weights if value is not None]
        raise DensePredError(f"{rdf} has no pytorch_state_dict weights (it has {', '.join(formats) or 'none'}); "
                             "densepred runs PyTorch state dicts, or a torch.export program (--model-file .pt2)")
    architecture, root = weights.architecture, Path(str(descr.root))
    if hasattr(architecture, "source"):
        model = f"{_local(root, architecture.source, rdf)}:{architecture.callable}"
    else:
        model = f"{architecture.import_from}:{architecture.callable}"
    axes = descr.inputs[0].axes
    channels = [a for a in axes if a.type == "channel"]
    dims = sum(1 for a in axes if a.type == "space")
    if dims not in (2, 3):
        raise DensePredError(f"{rdf}: its input has {dims} space axes; densepred predicts 2D and 3D images")
    activation, not_applied = _activation(descr.outputs[0].postprocessing, rdf)
    return ZooModel(model, dict(architecture.kwargs), _local(root, weights.source, rdf), dims,
                    len(channels[0].channel_names) if channels else 1, _steps(descr.inputs[0], rdf), activation,
                    not_applied)


def from_bioimageio(rdf: str | Path, *, output: str | None = None, **options: Any) -> Any:
    """A bioimage.io model (``rdf.yaml`` or a zipped package) as a
    :class:`~densepred.networks.ForeignNet` with its preprocessing; dims and channels come
    from its description, ``output`` from its postprocessing unless given (see
    :func:`from_torch` for it and the other options)."""
    model, zoo = load_rdf(rdf)
    return zoo_net(model, zoo, output, **options)


def zoo_net(model: torch.nn.Module, zoo: ZooModel, output: str | None = None, **options: Any) -> Any:
    """``model`` as the ForeignNet ``zoo`` describes: its preprocessing, its activation."""
    from .foreign import from_torch

    if zoo.not_applied:
        log.warning("the model's postprocessing %s is not applied: densepred writes the outputs%s",
                    ", ".join(zoo.not_applied), "" if zoo.activation == "identity" else f" after its {zoo.activation}")
    net = from_torch(model, dims=zoo.dims, in_channels=zoo.in_channels, output=output or zoo.activation, **options)
    net.preprocessing = zoo.preprocessing
    return net


def load_rdf(rdf: str | Path) -> tuple[torch.nn.Module, ZooModel]:
    """The model ``rdf`` describes, with its weights loaded, and what was read of it."""
    from .loading import load_model

    zoo = read_rdf(rdf)
    return load_model(zoo.model, zoo.kwargs, zoo.weights), zoo


def _unpacked(package: Path) -> Path:
    """The description inside a zipped model package, unpacked into a folder removed at exit."""
    try:
        archive = zipfile.ZipFile(package)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DensePredError(f"{package} is not a readable zip file ({exc}); expected a bioimage.io model "
                             "package or its rdf.yaml") from None
    with archive:
        names = sorted((n for n in archive.namelist() if PurePosixPath(n).name in RDF_NAMES),
                       key=lambda n: n.count("/"))
        if not names:
            raise DensePredError(f"{package} holds no {' or '.join(RDF_NAMES)}; expected a bioimage.io model package")
        folder = Path(tempfile.mkdtemp(prefix="densepred-zoo-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        archive.extractall(folder)  # zipfile drops absolute paths and '..' from member names
    return folder / names[0]


def _steps(tensor: Any, rdf: str | Path) -> tuple[Step, ...]:
    """The input's preprocessing as :class:`Step` s; unsupported steps or axes are refused."""
    axes = {str(a.id): a.type for a in tensor.axes}
    return tuple(_step(str(p.id), p.kwargs, axes, rdf) for p in tensor.preprocessing)


def _step(name: str, kwargs: Any, axes: dict[str, str], rdf: str | Path) -> Step:
    if name not in VOXELWISE + MEASURED:
        raise DensePredError(f"{rdf}: preprocessing step {name!r} is not supported; densepred applies "
                             f"{', '.join(VOXELWISE + MEASURED)}")
    values = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in dict(kwargs).items()
              if v is not None and k not in ("axes", "axis", "reference_tensor")}
    if name == "ensure_dtype" and values["dtype"] not in DTYPES:
        raise DensePredError(f"{rdf}: ensure_dtype {values['dtype']!r} is invalid; expected one of {DTYPES}")
    axis = getattr(kwargs, "axis", None)
    if axis is not None and axes.get(str(axis)) != "channel":
        raise DensePredError(f"{rdf}: preprocessing {name} gives values along axis {axis!r}; densepred supports "
                             "values per channel only")
    if getattr(kwargs, "reference_tensor", None) is not None:
        raise DensePredError(f"{rdf}: preprocessing {name} measures another tensor "
                             f"({kwargs.reference_tensor}); densepred measures the input itself only")
    reduced = getattr(kwargs, "axes", None)
    if reduced is None:
        return Step(name, values)
    reduced = {str(a) for a in reduced}
    kept = [a for a, kind in axes.items() if kind == "space" and a not in reduced]
    if kept:
        raise DensePredError(f"{rdf}: preprocessing {name} measures per {', '.join(kept)} (axes {sorted(reduced)}); "
                             "tiles cannot reproduce that, densepred measures over all space axes")
    channel = next((a for a, kind in axes.items() if kind == "channel"), None)
    batch = next((a for a, kind in axes.items() if kind == "batch"), None)
    return Step(name, values, per_channel=channel is not None and channel not in reduced,
                per_sample=batch is None or batch not in reduced)


def _activation(postprocessing: Any, rdf: str | Path) -> tuple[str, tuple[str, ...]]:
    """A leading sigmoid or softmax (over the channels) as the activation, and what follows it."""
    steps = [p for p in postprocessing if str(p.id) != "ensure_dtype"]
    if steps and str(steps[0].id) in ("sigmoid", "softmax"):
        axis = getattr(steps[0].kwargs, "axis", "channel")
        if str(steps[0].id) == "softmax" and str(axis) != "channel":
            raise DensePredError(f"{rdf}: its softmax is over axis {axis!r}; densepred's is over the channels")
        return str(steps[0].id), tuple(str(p.id) for p in steps[1:])
    return "identity", tuple(str(p.id) for p in steps)


def _description(path: Path) -> Any:
    try:
        from bioimageio.spec import load_model_description
    except ImportError:
        raise DensePredError("reading a bioimage.io model needs bioimageio.spec: pip install "
                             "'densepred[bioimageio]'") from None
    if not path.is_file():
        raise DensePredError(f"{path}: no such file (expected a bioimage.io rdf.yaml)")
    try:
        return load_model_description(path, format_version="latest", perform_io_checks=False)
    except ValueError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DensePredError(f"{path} is not a valid bioimage.io model description: {first}") from None


def _local(root: Path, source: Any, rdf: str | Path) -> Path:
    text = str(source)
    if "://" in text:
        raise DensePredError(f"{rdf} names {text}, a download; densepred reads local files only: unpack the model "
                             "package (with its weights and .py files) and give its rdf.yaml")
    path = root / text
    if not path.is_file():
        raise DensePredError(f"{rdf} names {text}, which is not beside it ({path} does not exist)")
    return path


__all__ = ["ZooModel", "from_bioimageio", "is_rdf", "load_rdf", "read_rdf", "zoo_net"]
