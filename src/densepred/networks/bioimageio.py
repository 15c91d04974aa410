"""Models from the BioImage Model Zoo: an ``rdf.yaml`` with ``pytorch_state_dict`` weights.

The description is read and validated by ``bioimageio.spec`` (format 0.4 descriptions are
converted to 0.5), without network access: the architecture's ``.py`` file and the weights
must be local files inside the package's folder, or in the same zipped model package (unpacked
into a private temporary folder removed at exit, within a size limit). **Running a model runs
its code**: the architecture's ``.py`` file, or the package it is imported from - only known
model libraries unless the user trusts another (``--trust-imports``); a one-line notice says
so before the code runs. The model's class is built with the description's
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
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..errors import DensePredError
from ..system import parse_size
from .processing import DTYPES, MEASURED, VOXELWISE, Step

log = logging.getLogger("densepred")

RDF_SUFFIXES = (".yaml", ".yml", ".zip")
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
# packages an architecture may be imported from (``import_from``) without --trust-imports
TRUSTED_IMPORTS = ("monai.networks.nets", "torchvision.models", "segmentation_models_pytorch", "densepred")
LIMIT_VARIABLE, DEFAULT_UNPACK_LIMIT = "DENSEPRED_UNPACK_LIMIT", 4 * 2**30
MAX_RATIO = 100  # a member unpacking more than this many times its stored size is a zip bomb

_UNPACKED: dict[tuple[str, int, int], Path] = {}  # (zip, size, mtime) -> its unpacked rdf.yaml
_ANNOUNCED: set[str] = set()


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


def read_rdf(rdf: str | Path, trust_imports: Sequence[str] = ()) -> ZooModel:
    """The architecture, kwargs, weights file and input axes of the model ``rdf`` describes.

    A package is a sandbox of files: every file it names must lie inside its folder, and an
    architecture imported from an installed package (``import_from``) must come from a known
    model library (:data:`TRUSTED_IMPORTS`) or one in ``trust_imports``.
    """
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
        model = f"{_trusted(str(architecture.import_from), trust_imports, rdf)}:{architecture.callable}"
    axes = descr.inputs[0].axes
    channels = [a for a in axes if a.type == "channel"]
    dims = sum(1 for a in axes if a.type == "space")
    if dims not in (2, 3):
        raise DensePredError(f"{rdf}: its input has {dims} space axes; densepred predicts 2D and 3D images")
    activation, not_applied = _activation(descr.outputs[0].postprocessing, rdf)
    return ZooModel(model, dict(architecture.kwargs), _local(root, weights.source, rdf), dims,
                    len(channels[0].channel_names) if channels else 1, _steps(descr.inputs[0], rdf), activation,
                    not_applied)


def from_bioimageio(rdf: str | Path, *, output: str | None = None, trust_imports: Sequence[str] = (),
                    **options: Any) -> Any:
    """A bioimage.io model (``rdf.yaml`` or a zipped package) as a
    :class:`~densepred.networks.ForeignNet` with its preprocessing; dims and channels come
    from its description, ``output`` from its postprocessing unless given (see
    :func:`from_torch` for it and the other options). Running a model runs its code: see
    :func:`read_rdf` for what a package may name, and ``trust_imports``."""
    model, zoo = load_rdf(rdf, trust_imports)
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


def load_rdf(rdf: str | Path, trust_imports: Sequence[str] = ()) -> tuple[torch.nn.Module, ZooModel]:
    """The model ``rdf`` describes, with its weights loaded, and what was read of it."""
    from .loading import load_model

    zoo = read_rdf(rdf, trust_imports)
    announce(zoo, rdf)
    return load_model(zoo.model, zoo.kwargs, zoo.weights), zoo


def announce(zoo: ZooModel, rdf: str | Path) -> None:
    """The one-line notice, once per package and process, that the package's code runs now."""
    if zoo.model not in _ANNOUNCED:
        _ANNOUNCED.add(zoo.model)
        log.warning("running the model code of %s (%s) with your permissions: run only packages you trust",
                    rdf, zoo.model)


def _trusted(module: str, trust_imports: Sequence[str], rdf: str | Path) -> str:
    """``module`` if it belongs to a trusted package; an architecture from anywhere else could
    be any function (``os:system``), so it is refused until the user trusts its package."""
    allowed = (*TRUSTED_IMPORTS, *trust_imports)
    if any(module == name or module.startswith(name + ".") for name in allowed):
        return module
    package = module.split(".", maxsplit=1)[0]
    raise DensePredError(f"{rdf}: its architecture is imported from {module!r}, which is not a known model library "
                         f"({', '.join(TRUSTED_IMPORTS)}); importing it runs that package's code: pass "
                         f"--trust-imports {package} (trust_imports=[{package!r}]) if you trust it")


def _unpacked(package: Path) -> Path:
    """The description inside a zipped model package, unpacked into a private folder that is
    removed when the process exits (a SIGTERM to the CLI included) and shared by every call on
    the same, unchanged file. Names are sanitised by ``zipfile``; symlinks, more than
    :func:`unpack_limit` bytes and members compressed more than :data:`MAX_RATIO` times are
    refused before anything is written."""
    found = package.stat() if package.is_file() else None
    key = (str(package), found.st_size, found.st_mtime_ns) if found else None
    if key in _UNPACKED and _UNPACKED[key].is_file():
        return _UNPACKED[key]
    try:
        archive = zipfile.ZipFile(package)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DensePredError(f"{package} is not a readable zip file ({exc}); expected a bioimage.io model "
                             "package or its rdf.yaml") from None
    with archive:
        _check_members(package, archive.infolist())
        folder = Path(tempfile.mkdtemp(prefix="densepred-zoo-"))  # private: mode 0700
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        try:
            archive.extractall(folder)  # zipfile drops absolute paths and '..' from member names
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise DensePredError(f"{package} cannot be unpacked: {exc}") from None
    rdf = _rdf_in(folder)
    if rdf is None:
        shutil.rmtree(folder, ignore_errors=True)
        raise DensePredError(f"{package} holds no {' or '.join(RDF_NAMES)}; expected a bioimage.io model package")
    if key is not None:
        _UNPACKED[key] = rdf
    return rdf


def _check_members(package: Path, members: list[zipfile.ZipInfo]) -> None:
    limit, total = unpack_limit(), 0
    for member in members:
        if stat.S_ISLNK(member.external_attr >> 16):
            raise DensePredError(f"{package}: member {member.filename!r} is a symbolic link; a model package holds "
                                 "plain files only")
        total += member.file_size
        ratio = member.file_size // max(member.compress_size, 1)
        if member.file_size > 2**20 and ratio > MAX_RATIO:
            raise DensePredError(f"{package}: member {member.filename!r} unpacks {ratio} times larger than it is "
                                 f"stored (more than {MAX_RATIO}x): refused as a zip bomb")
    if total > limit:
        raise DensePredError(f"{package} unpacks to {total / 2**30:.2f} GiB, more than the limit of "
                             f"{limit / 2**30:.2f} GiB; set {LIMIT_VARIABLE} (e.g. 16GiB) to allow more")


def unpack_limit() -> int:
    """Bytes a zipped package may unpack to: ``$DENSEPRED_UNPACK_LIMIT`` (e.g. ``16GiB``), default 4 GiB."""
    text = os.environ.get(LIMIT_VARIABLE)
    return parse_size(text, LIMIT_VARIABLE) if text else DEFAULT_UNPACK_LIMIT


def _rdf_in(folder: Path) -> Path | None:
    """The shallowest description file inside ``folder`` (found on disk, never by a member's raw name)."""
    found = sorted((p for name in RDF_NAMES for p in folder.rglob(name) if p.is_file() and not p.is_symlink()),
                   key=lambda p: (len(p.relative_to(folder).parts), str(p)))
    return found[0] if found else None


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
        raise DensePredError(f"{path} is not a valid bioimage.io model description: {_invalid(exc)}") from None


def _invalid(exc: ValueError) -> str:
    """The first reasons ``bioimageio.spec`` gives, each as ``field: why`` (its header lines and
    links dropped)."""
    errors = getattr(exc, "errors", None)  # a pydantic ValidationError
    if callable(errors):
        reasons = [f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors()[:2]]
    else:
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
        reasons = [line for line in lines if not line.endswith(":") and "validation error" not in line
                   and not line.startswith("For further information")][:2]
    return " ".join("; ".join(reasons).split())[:400] or type(exc).__name__


def _local(root: Path, source: Any, rdf: str | Path) -> Path:
    """The package file ``source`` names: a relative path that stays inside the package folder
    (no ``..``, no absolute path, no symlink leading out)."""
    text = str(source)
    if "://" in text:
        raise DensePredError(f"{rdf} names {text}, a download; densepred reads local files only: unpack the model "
                             "package (with its weights and .py files) and give its rdf.yaml")
    relative = PurePosixPath(text.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or Path(text).is_absolute():
        raise DensePredError(f"{rdf} names {text}, outside its package folder; a package may name only files "
                             "inside its own folder")
    path = (root / text).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DensePredError(f"{rdf} names {text}, a link to {path} outside its package folder; a package may name "
                             "only files inside its own folder")
    if not path.is_file():
        raise DensePredError(f"{rdf} names {text}, which is not beside it ({root / text} does not exist)")
    return path


__all__ = ["ZooModel", "from_bioimageio", "is_rdf", "load_rdf", "read_rdf", "zoo_net"]
