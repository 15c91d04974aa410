"""Models from the BioImage Model Zoo: an ``rdf.yaml`` with ``pytorch_state_dict`` weights.

The description is read and validated by ``bioimageio.spec`` (format 0.4 descriptions are
converted to 0.5), without network access: the architecture's ``.py`` file and the weights
must be local files beside the ``rdf.yaml`` (an unpacked model package). The model's class
is built with the description's kwargs and its state dict loaded with
``torch.load(weights_only=True)``; the first input's axes give the spatial dimensions and the
channels. ``pip install 'densepred[bioimageio]'`` installs the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DensePredError

RDF_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ZooModel:
    """What densepred needs of a bioimage.io model description."""

    model: str  # path/to/file.py:Class or package.module:Class
    kwargs: dict[str, Any]
    weights: Path
    dims: int
    in_channels: int


def is_rdf(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in RDF_SUFFIXES


def read_rdf(rdf: str | Path) -> ZooModel:
    """The architecture, kwargs, weights file and input axes of the model ``rdf`` describes."""
    descr = _description(Path(rdf).expanduser().resolve())
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
    return ZooModel(model, dict(architecture.kwargs), _local(root, weights.source, rdf), dims,
                    len(channels[0].channel_names) if channels else 1)


def from_bioimageio(rdf: str | Path, *, output: str = "softmax", **options: Any) -> Any:
    """A bioimage.io model as a :class:`~densepred.networks.ForeignNet` (see :func:`from_torch`
    for ``output`` and the other options); dims and channels come from its description."""
    from .foreign import from_torch

    model, zoo = load_rdf(rdf)
    return from_torch(model, dims=zoo.dims, in_channels=zoo.in_channels, output=output, **options)


def load_rdf(rdf: str | Path) -> tuple[torch.nn.Module, ZooModel]:
    """The model ``rdf`` describes, with its weights loaded, and what was read of it."""
    from .loading import load_model

    zoo = read_rdf(rdf)
    return load_model(zoo.model, zoo.kwargs, zoo.weights), zoo


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


__all__ = ["ZooModel", "from_bioimageio", "is_rdf", "load_rdf", "read_rdf"]
