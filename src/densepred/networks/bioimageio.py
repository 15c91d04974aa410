"""Models from the BioImage Model Zoo: an ``rdf.yaml`` with ``pytorch_state_dict``, TorchScript
or ONNX weights.

The description is read and validated by ``bioimageio.spec`` (format 0.5, or 0.4 as it is where
it does not convert: :mod:`.zoo_description`), without network access: the architecture's
``.py`` file and the weights must be local files inside the package's folder, or in the same
zipped model package (unpacked into a private temporary folder removed at exit, within a size
limit). **Running a model runs its code**: the architecture's ``.py`` file, or the package it is
imported from - only known model libraries unless the user trusts another (``--trust-imports``),
or a TorchScript or ONNX file (:mod:`.model_files`); a one-line notice says so before the code
runs. A state dict is loaded with ``torch.load(weights_only=True)`` into the class built with the
description's kwargs. The first input's axes give the spatial dimensions and the channels; a
fixed input size becomes the only window size, and a window beyond the image is padded as the
input's ``pad`` says (zeros by default). Of several outputs the first is predicted unless
another is chosen (``--output-tensor``).

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
from ..geometry.scale import scale_pairs
from ..system import parse_size
from .processing import Step
from .zoo_description import WEIGHTS_ORDER, Description, Output, Weights, read_description

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

    model: str | None  # path/to/file.py:Class or package.module:Class; None for a TorchScript or ONNX file
    kwargs: dict[str, Any]
    weights: Path  # the state dict, or the TorchScript or ONNX file
    dims: int
    in_channels: int
    preprocessing: tuple[Step, ...] = ()
    activation: str = "identity"  # from a leading sigmoid or softmax postprocessing step
    after: tuple[tuple[str, Any], ...] = field(default=())  # the postprocessing after it: (name, kwargs)
    weights_format: str = "pytorch_state_dict"
    output_index: int | None = None  # which output, for a model with several (None: it has one)
    fixed: tuple[int, ...] | None = None  # the input's space sizes when the description fixes them
    pad: tuple[str, float] = ("constant", 0.0)
    description: Description | None = None
    scale: tuple[tuple[int, int], ...] = ()  # the output's voxels per input voxel, (up, down) per axis; () for 1

    @property
    def not_applied(self) -> tuple[str, ...]:
        """The postprocessing steps densepred's outputs leave out (a cast to a dtype aside)."""
        return tuple(name for name, _ in self.after if name != "ensure_dtype")

    @property
    def model_file(self) -> Path | None:
        """The file that holds the whole model (TorchScript, ONNX), else None."""
        return None if self.weights_format == "pytorch_state_dict" else self.weights


def is_rdf(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in RDF_SUFFIXES


def read_rdf(rdf: str | Path, trust_imports: Sequence[str] = (), weights_format: str | None = None,
             output: str | int | None = None) -> ZooModel:
    """The model ``rdf`` describes: its weights (the first local entry in the order
    state dict, TorchScript, ONNX, or ``weights_format``), input axes and processing, and the
    output ``output`` names (default: the first).

    A package is a sandbox of files: every file it names must lie inside its folder, and an
    architecture imported from an installed package (``import_from``) must come from a known
    model library (:data:`TRUSTED_IMPORTS`) or one in ``trust_imports``.
    """
    return zoo_model(describe(rdf), rdf, trust_imports, weights_format, output)


def describe(rdf: str | Path) -> Description:
    """The description of ``rdf`` (an rdf.yaml, or a zipped package unpacked first)."""
    path = Path(rdf).expanduser().resolve()
    return read_description(_unpacked(path) if path.suffix.lower() == ".zip" else path, rdf)


def zoo_model(descr: Description, rdf: str | Path, trust_imports: Sequence[str] = (),
              weights_format: str | None = None, output: str | int | None = None) -> ZooModel:
    """The model ``descr`` describes, with its weights and output chosen (see :func:`read_rdf`)."""
    if descr.dims not in (2, 3):
        raise DensePredError(f"{rdf}: its input has {descr.dims} space axes; densepred predicts 2D and 3D images")
    index, chosen = descr.output(output, rdf)
    weights, model, kwargs, file = _weights(descr, rdf, trust_imports, weights_format)
    activation, after = _activation(chosen.postprocessing, rdf)
    several = len(descr.outputs) > 1 or output is not None
    return ZooModel(model, kwargs, file, descr.dims, descr.channels, descr.preprocessing, activation, after,
                    weights.format, index if several else None, descr.fixed, descr.pad, descr,
                    _scale(chosen, descr.fixed, rdf))


def _scale(output: Output, fixed: tuple[int, ...] | None, rdf: str | Path) -> tuple[tuple[int, int], ...]:
    """The output's scale as ``(up, down)`` pairs, () at the input's scale. A fixed output's size
    over a fixed input's mixes scale and crop, so it is left to the model's forward."""
    if fixed is not None or all(s == 1.0 for s in output.scale):
        return ()
    try:
        return scale_pairs(list(output.scale), len(output.scale))
    except DensePredError as exc:
        raise DensePredError(f"{rdf}: its output {output.name}: {exc}") from None


def _weights(descr: Description, rdf: str | Path, trust_imports: Sequence[str],
             asked: str | None) -> tuple[Weights, str | None, dict[str, Any], Path]:
    """The weights entry to run, its model (``file.py:Class``/``module:Class``), kwargs and file:
    ``asked``, else the first in :data:`WEIGHTS_ORDER` whose files are local (a download is
    passed over while another entry remains)."""
    present = [w.format for w in descr.weights]
    if asked is not None and asked not in present:
        raise DensePredError(f"{rdf} has no {asked} weights; it has {', '.join(present) or 'none'} "
                             f"(densepred runs {', '.join(WEIGHTS_ORDER)})")
    candidates = [w for w in descr.weights if asked is None or w.format == asked]
    if not candidates:
        raise DensePredError(f"{rdf} has no weights densepred runs ({', '.join(WEIGHTS_ORDER)})")
    for weights in candidates:
        try:
            return _resolved(weights, descr.root, rdf, trust_imports)
        except Download as exc:
            if weights is candidates[-1]:
                raise
            log.info("%s; using its %s weights", exc, candidates[candidates.index(weights) + 1].format)
    raise AssertionError("unreachable")


class Download(DensePredError):
    """A package names a file by URL."""


def _resolved(weights: Weights, root: Path, rdf: str | Path,
              trust_imports: Sequence[str]) -> tuple[Weights, str | None, dict[str, Any], Path]:
    file = local_file(root, weights.source, rdf)
    if weights.format != "pytorch_state_dict":
        return weights, None, {}, file
    if weights.architecture_file is not None:
        model = f"{local_file(root, weights.architecture_file, rdf)}:{weights.callable}"
    else:
        model = f"{_trusted(str(weights.import_from), trust_imports, rdf)}:{weights.callable}"
    return weights, model, dict(weights.kwargs or {}), file


def from_bioimageio(rdf: str | Path, *, output: str | None = None, trust_imports: Sequence[str] = (),
                    weights_format: str | None = None, output_tensor: str | int | None = None,
                    **options: Any) -> Any:
    """A bioimage.io model (``rdf.yaml`` or a zipped package) as a
    :class:`~densepred.networks.ForeignNet` with its preprocessing; dims and channels come
    from its description, ``output`` (the activation) from its postprocessing unless given (see
    :func:`from_torch` for it and the other options). ``weights_format``: ``pytorch_state_dict``,
    ``torchscript`` or ``onnx`` (default: the first the package has locally, in that order);
    ``output_tensor``: the name or index of the output to predict, for a model with several.
    Running a model runs its code: see :func:`read_rdf` for what a package may name, and
    ``trust_imports``."""
    model, zoo = load_rdf(rdf, trust_imports, weights_format, output_tensor)
    return zoo_net(model, zoo, output, **options)


def zoo_net(model: torch.nn.Module, zoo: ZooModel, output: str | None = None, **options: Any) -> Any:
    """``model`` as the ForeignNet ``zoo`` describes: its output, preprocessing, activation,
    fixed input size and padding."""
    from .foreign import from_torch

    if zoo.not_applied:
        log.warning("the model's postprocessing %s is not applied: densepred writes the outputs%s",
                    ", ".join(zoo.not_applied), "" if zoo.activation == "identity" else f" after its {zoo.activation}")
    if zoo.output_index is not None:
        options.setdefault("output_tensor", zoo.output_index)
    if zoo.fixed is not None:
        options.setdefault("fixed", zoo.fixed)
    if zoo.scale:
        options.setdefault("scale", zoo.scale)
    net = from_torch(model, dims=zoo.dims, in_channels=zoo.in_channels, output=output or zoo.activation, **options)
    net.preprocessing, net.padding = zoo.preprocessing, zoo.pad
    return net


def load_rdf(rdf: str | Path, trust_imports: Sequence[str] = (), weights_format: str | None = None,
             output_tensor: str | int | None = None) -> tuple[torch.nn.Module, ZooModel]:
    """The model ``rdf`` describes, with its weights loaded, and what was read of it."""
    zoo = read_rdf(rdf, trust_imports, weights_format, output_tensor)
    return load_zoo(zoo, rdf), zoo


def load_zoo(zoo: ZooModel, rdf: str | Path) -> torch.nn.Module:
    """The model ``zoo`` names, with its weights loaded (after the notice that its code runs)."""
    from .loading import load_model

    announce(zoo, rdf)
    if zoo.model_file is not None:
        return load_model(model_file=zoo.model_file)
    return load_model(zoo.model, zoo.kwargs, zoo.weights)


def announce(zoo: ZooModel, rdf: str | Path) -> None:
    """The one-line notice, once per package and process, that the package's code runs now."""
    what = zoo.model or f"{zoo.weights.name}, {zoo.weights_format}"
    if what not in _ANNOUNCED:
        _ANNOUNCED.add(what)
        log.warning("running the model code of %s (%s) with your permissions: run only packages you trust",
                    rdf, what)


def _trusted(module: str, trust_imports: Sequence[str], rdf: str | Path) -> str:
    """``module`` if it belongs to a trusted package; an architecture from anywhere else could
    be any function (``os:system``), so it is refused until the user trusts its package."""
    allowed = (*TRUSTED_IMPORTS, *((trust_imports,) if isinstance(trust_imports, str) else trust_imports))
    if any(module == name or module.startswith(name + ".") for name in allowed):
        return module
    package = module.split(".", maxsplit=1)[0]
    raise DensePredError(f"{rdf}: its architecture is imported from {module!r}, which is not a known model library "
                         f"({', '.join(TRUSTED_IMPORTS)}); importing it runs that package's code: pass "
                         f"--trust-imports {package} (trust_imports=[{package!r}]) if you trust it")


def unpacked_here(package: str | Path) -> Path | None:
    """The description of the zipped ``package`` as this process unpacked it (unchanged since),
    else None: a process this one starts (a window's measurement) reads it there, never
    unpacking the package again."""
    package = Path(package)
    found = package.stat() if package.is_file() else None
    rdf = _UNPACKED.get((str(package), found.st_size, found.st_mtime_ns)) if found else None
    return rdf if rdf is not None and rdf.is_file() else None


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


def _activation(postprocessing: Sequence[tuple[str, Any]],
                rdf: str | Path) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """A leading sigmoid or softmax (over the channels; casts before it aside) as the
    activation, and the steps after it."""
    steps = list(postprocessing)
    while steps and steps[0][0] == "ensure_dtype":
        steps.pop(0)
    if steps and steps[0][0] in ("sigmoid", "softmax"):
        axis = getattr(steps[0][1], "axis", "channel")
        if steps[0][0] == "softmax" and str(axis) != "channel":
            raise DensePredError(f"{rdf}: its softmax is over axis {axis!r}; densepred's is over the channels")
        return steps[0][0], tuple(steps[1:])
    return "identity", tuple(steps)


def local_file(root: Path, source: Any, rdf: str | Path) -> Path:
    """The package file ``source`` names: a relative path that stays inside the package folder
    (no ``..``, no absolute path, no symlink leading out)."""
    text = str(source)
    if "://" in text:
        raise Download(f"{rdf} names {text}, a download; densepred reads local files only: unpack the model "
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


__all__ = ["Download", "ZooModel", "describe", "from_bioimageio", "is_rdf", "load_rdf", "load_zoo", "read_rdf",
           "zoo_model", "zoo_net"]
