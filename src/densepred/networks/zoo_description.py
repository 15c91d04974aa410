"""What densepred reads of a bioimage.io model description, format 0.5 or 0.4.

``bioimageio.spec`` validates the description. A 0.4 description that converts to 0.5 is read
converted; one that is valid 0.4 but does not convert (a fixed-size output with a halo, say) is
read as it is: its input's axes and processing go through the spec's own 0.4-to-0.5 mapping of
axes and steps, its outputs and weights are read from the 0.4 fields. Nothing here runs a model
or opens a weights file: the result is plain data (:class:`Description`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DensePredError
from .processing import DTYPES, MEASURED, VOXELWISE, Step

log = logging.getLogger("densepred")

WEIGHTS_ORDER = ("pytorch_state_dict", "torchscript", "onnx")  # what a user expects densepred to pick first
ZOO_TOLERANCE = (1.5e-4, 1e-4, 0.0)  # absolute, relative, mismatched elements per million (bioimageio.core's)


@dataclass(frozen=True)
class Weights:
    """One weights entry: its format, its ``source`` as written, and for a state dict the
    architecture (``file.py`` path as written, or ``import_from`` module) and its kwargs."""

    format: str
    source: str
    callable: str = ""
    architecture_file: str | None = None
    import_from: str | None = None
    kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class Output:
    """One output tensor: its name, axes (ids and types in order), what it is relative to the
    input per space axis (``scale``: output voxels per input voxel; ``offset``: voxels added),
    its postprocessing step names and parameters, and its test tensor."""

    name: str
    axes: tuple[tuple[str, str], ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    postprocessing: tuple[tuple[str, Any], ...]
    test: str | None


@dataclass(frozen=True)
class Description:
    """A model description as densepred uses it."""

    format_version: str
    root: Path
    input_name: str
    input_axes: tuple[tuple[str, str], ...]  # (id, type) in the tensor's order
    channels: int
    fixed: tuple[int, ...] | None  # the input's space sizes when they are fixed
    minimum: tuple[int, ...]  # else the least size and step per space axis
    step: tuple[int, ...]
    preprocessing: tuple[Step, ...]
    outputs: tuple[Output, ...]
    weights: tuple[Weights, ...]  # in WEIGHTS_ORDER, those present
    test_input: str | None
    tolerances: tuple[dict[str, Any], ...]  # the package's own reproducibility tolerances
    pad: tuple[str, float] = ("constant", 0.0)  # how a window beyond the image is filled (NumPy's pad mode)

    @property
    def dims(self) -> int:
        return sum(1 for _, kind in self.input_axes if kind == "space")

    def output(self, choice: str | int | None, rdf: Any) -> tuple[int, Output]:
        """The output ``choice`` names (its name or index; the first when None)."""
        if choice is None:
            return 0, self.outputs[0]
        names = [o.name for o in self.outputs]
        if str(choice) in names:
            return names.index(str(choice)), self.outputs[names.index(str(choice))]
        if str(choice).isdigit() and int(choice) < len(names):
            return int(choice), self.outputs[int(choice)]
        raise DensePredError(f"{rdf} has no output {choice!r}; its outputs are {', '.join(names)} (give a name or an "
                             f"index 0..{len(names) - 1})")

    def tolerance(self, output: str, weights_format: str) -> tuple[float, float, float]:
        """Absolute and relative tolerance and mismatched elements per million for ``output``
        run from ``weights_format``: the package's first entry that applies, else the zoo's."""
        for entry in self.tolerances:
            ids, formats = entry.get("output_ids") or (), entry.get("weights_formats") or ()
            if (not ids or output in ids) and (not formats or weights_format in formats):
                return (float(entry.get("absolute_tolerance", ZOO_TOLERANCE[0])),
                        float(entry.get("relative_tolerance", ZOO_TOLERANCE[1])),
                        float(entry.get("mismatched_elements_per_million", 0.0)))
        return ZOO_TOLERANCE


def read_description(path: Path, rdf: Any) -> Description:
    """The description at ``path`` (``rdf``: how to name it in messages)."""
    descr = _load(path)
    if str(descr.format_version).startswith("0.4"):
        return _from_v04(descr, rdf)
    return _from_v05(descr, rdf)


def _load(path: Path) -> Any:
    try:
        from bioimageio.spec import load_model_description
    except ImportError:
        raise DensePredError("reading a bioimage.io model needs bioimageio.spec: pip install "
                             "'densepred[bioimageio]'") from None
    if not path.is_file():
        raise DensePredError(f"{path}: no such file (expected a bioimage.io rdf.yaml)")
    try:
        return load_model_description(path, format_version="latest", perform_io_checks=False)
    except ValueError as latest:
        try:
            descr = load_model_description(path, format_version="discover", perform_io_checks=False)
        except ValueError as exc:
            reasons = dict.fromkeys([_invalid(latest), _invalid(exc)])
            raise DensePredError(f"{path} is not a valid bioimage.io model description: "
                                 f"{'; as it is: '.join(reasons)}") from None
        if not str(getattr(descr, "format_version", "")).startswith("0.4"):
            raise DensePredError(f"{path} is not a valid bioimage.io model description: {_invalid(latest)}") from None
        log.info("%s is read as format %s (it does not convert to 0.5: %s)", path, descr.format_version,
                 _invalid(latest))
        return descr


def _invalid(exc: ValueError) -> str:
    """Every reason ``bioimageio.spec`` gives, each as ``field: why`` (its header lines and
    links dropped)."""
    errors = getattr(exc, "errors", None)  # a pydantic ValidationError
    if callable(errors):
        reasons = [f"{_where(e.get('loc', ()))}: {_short(str(e.get('msg', '')))}" for e in errors()]
    else:
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
        reasons = [_reason(line) for line in lines if not line.endswith(":") and "validation error" not in line
                   and not line.startswith("For further information")]
    return " ".join("; ".join(dict.fromkeys(reasons)).split())[:2000] or type(exc).__name__


def _reason(line: str) -> str:
    """``field: why`` from a line of the spec's message."""
    where, _, why = line.partition(": ")
    return f"{_where(where.split('.'))}: {_short(why)}" if why else _short(line)


def _where(loc: Any) -> str:
    """A field's place, without pydantic's validator names (``function-after[...]``)."""
    return ".".join(str(p) for p in loc if not any(c in str(p) for c in "[(")) or "description"


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _from_v05(descr: Any, rdf: Any) -> Description:
    tensor = descr.inputs[0]
    axes = tuple((str(a.id), str(a.type)) for a in tensor.axes)
    space = [a for a in tensor.axes if a.type == "space"]
    fixed = tuple(a.size for a in space) if all(isinstance(a.size, int) for a in space) else None
    minimum = tuple(a.size if isinstance(a.size, int) else getattr(a.size, "min", 1) for a in space)
    step = tuple(0 if isinstance(a.size, int) else getattr(a.size, "step", 1) for a in space)
    channels = [a for a in tensor.axes if a.type == "channel"]
    scales = {str(a.id): (float(a.scale), a.size if isinstance(a.size, int) else None) for a in space}
    outputs = tuple(_output_v05(o, scales) for o in descr.outputs)
    config = getattr(descr.config, "bioimageio", None)
    tolerances = tuple(t.model_dump() for t in getattr(config, "reproducibility_tolerance", ()) or ())
    return Description(str(descr.format_version), Path(str(descr.root)), str(tensor.id), axes,
                       len(channels[0].channel_names) if channels else 1, fixed, minimum, step,
                       _steps(tensor, rdf), outputs, _weights(descr.weights, _architecture_v05), _test(tensor),
                       tolerances, _pad(getattr(tensor, "pad", None)))


def _pad(pad: Any) -> tuple[str, float]:
    """The input's padding as NumPy's mode: constant (its value), edge, reflect or symmetric."""
    if pad is None:
        return "constant", 0.0
    mode = str(getattr(pad, "mode", "constant"))
    return mode, float(getattr(pad, "value", 0.0) or 0.0)


def _output_v05(tensor: Any, inputs: dict[str, tuple[float, int | None]]) -> Output:
    """The output's axes; its scale per space axis is the input's physical voxel size over its
    own (a fixed output size over a fixed input size where both are fixed)."""
    scale, offset = [], []
    for a in tensor.axes:
        if a.type != "space":
            continue
        size = a.size
        reference = str(getattr(size, "axis_id", a.id))
        in_scale, in_fixed = inputs.get(reference, (float(a.scale), None))
        if isinstance(size, int) and in_fixed:
            scale.append(size / in_fixed)
        else:
            scale.append(in_scale / float(a.scale))
        offset.append(float(getattr(size, "offset", 0)))
    post = tuple((str(p.id), p.kwargs) for p in tensor.postprocessing)
    return Output(str(tensor.id), tuple((str(a.id), str(a.type)) for a in tensor.axes), tuple(scale), tuple(offset),
                  post, _test(tensor))


def _test(tensor: Any) -> str | None:
    test = getattr(tensor, "test_tensor", None)
    return None if test is None else str(test.source)


def _weights(weights: Any, architecture: Any) -> tuple[Weights, ...]:
    """The weights entries densepred runs, in :data:`WEIGHTS_ORDER`; ``architecture(entry)``
    reads a state dict's callable, file, module and kwargs (their fields differ by format)."""
    found = []
    for name in WEIGHTS_ORDER:
        entry = getattr(weights, name, None)
        if entry is not None:
            found.append(Weights(name, str(entry.source), *architecture(entry)) if name == "pytorch_state_dict"
                         else Weights(name, str(entry.source)))
    return tuple(found)


def _architecture_v05(entry: Any) -> tuple[str, str | None, str | None, dict[str, Any]]:
    arch = entry.architecture
    from_file = hasattr(arch, "source")
    return (str(arch.callable), str(arch.source) if from_file else None,
            None if from_file else str(arch.import_from), dict(arch.kwargs))


def _architecture_v04(entry: Any) -> tuple[str, str | None, str | None, dict[str, Any]]:
    arch = entry.architecture
    from_file = hasattr(arch, "source_file")
    return (str(arch.callable_name), str(arch.source_file) if from_file else None,
            None if from_file else str(arch.module_name), dict(entry.kwargs or {}))


def _from_v04(descr: Any, rdf: Any) -> Description:
    from bioimageio.spec.model import v0_5

    tensor = descr.inputs[0]
    axes = tuple((_AXIS_IDS.get(a, a), _AXIS_TYPES.get(a, "space")) for a in tensor.axes)
    shape, space = tensor.shape, [i for i, a in enumerate(tensor.axes) if _AXIS_TYPES.get(a, "space") == "space"]
    if isinstance(shape, list | tuple):
        fixed, minimum, step = tuple(shape[i] for i in space), tuple(shape[i] for i in space), (0,) * len(space)
    else:
        minimum, step = tuple(shape.min[i] for i in space), tuple(shape.step[i] for i in space)
        fixed = minimum if not any(step) else None
    channel = tensor.axes.find("c")
    channels = 1 if channel < 0 else (shape[channel] if isinstance(shape, list | tuple) else shape.min[channel])
    try:
        converted = tuple(v0_5._convert_proc(p, tensor.axes) for p in tensor.preprocessing)
    except (AttributeError, ValueError, AssertionError) as exc:
        raise DensePredError(f"{rdf}: its 0.4 preprocessing cannot be read: {exc}") from None
    steps = tuple(_step(str(p.id), p.kwargs, dict(axes), rdf) for p in converted)
    tests = [str(t) for t in descr.test_outputs] + [None] * len(descr.outputs)
    outputs = tuple(_output_v04(o, tensor, test) for o, test in zip(descr.outputs, tests, strict=False))
    config = descr.config if isinstance(descr.config, dict) else {}
    kwargs = config.get("bioimageio", {}).get("test_kwargs", {}) if isinstance(config.get("bioimageio"), dict) else {}
    tolerances = tuple({"absolute_tolerance": 1.5 * 10 ** -float(v["decimal"]), "relative_tolerance": 0.0,
                        "weights_formats": [k]} for k, v in kwargs.items() if isinstance(v, dict) and "decimal" in v)
    return Description(str(descr.format_version), Path(str(descr.root)), str(tensor.name), axes, channels, fixed,
                       minimum, step, steps, outputs, _weights(descr.weights, _architecture_v04),
                       str(descr.test_inputs[0]) if descr.test_inputs else None, tolerances)


_AXIS_TYPES = {"b": "batch", "c": "channel", "t": "time", "i": "index"}
_AXIS_IDS = {"b": "batch", "c": "channel"}


def _output_v04(tensor: Any, source: Any, test: str | None) -> Output:
    axes = tuple((_AXIS_IDS.get(a, a), _AXIS_TYPES.get(a, "space")) for a in tensor.axes)
    space = [i for i, a in enumerate(tensor.axes) if _AXIS_TYPES.get(a, "space") == "space"]
    shape = tensor.shape
    if isinstance(shape, list | tuple):  # a fixed output: its scale is its size over the input's
        sizes = [shape[i] for i in space]
        inputs = source.shape if isinstance(source.shape, list | tuple) else source.shape.min
        in_space = [inputs[i] for i, a in enumerate(source.axes) if _AXIS_TYPES.get(a, "space") == "space"]
        scale, offset = tuple(s / n for s, n in zip(sizes, in_space, strict=False)), (0.0,) * len(space)
    else:
        scale = tuple(float(shape.scale[i]) for i in space)
        offset = tuple(2 * float(shape.offset[i]) for i in space)
    from bioimageio.spec.model import v0_5

    try:  # the spec's own mapping of 0.4 steps to 0.5 ones
        post = tuple((str(c.id), c.kwargs) for c in (v0_5._convert_proc(p, tensor.axes)
                                                        for p in tensor.postprocessing))
    except (AttributeError, ValueError, AssertionError):
        post = tuple((str(p.name), p.kwargs) for p in tensor.postprocessing)
    return Output(str(tensor.name), axes, scale, offset, post, test)


def output_steps(steps: Any, rdf: Any) -> tuple[Step, ...]:
    """Postprocessing steps as :class:`Step` s that act voxel by voxel (a ``softmax`` over the
    channels included); a step that measures the output (or another tensor) is refused."""
    found = []
    for name, kwargs in steps:
        values = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in dict(kwargs).items()
                  if v is not None and k not in ("axes", "axis")}
        if name not in (*VOXELWISE, "softmax") or "reference_tensor" in values:
            raise DensePredError(f"{rdf}: its postprocessing {name} measures a whole tensor; densepred applies "
                                 f"voxel-wise steps only ({', '.join(VOXELWISE)}, softmax)")
        found.append(Step(name, values))
    return tuple(found)


def _steps(tensor: Any, rdf: Any) -> tuple[Step, ...]:
    """The input's preprocessing as :class:`Step` s; unsupported steps or axes are refused."""
    axes = {str(a.id): str(a.type) for a in tensor.axes}
    return tuple(_step(str(p.id), p.kwargs, axes, rdf) for p in tensor.preprocessing)


def _step(name: str, kwargs: Any, axes: dict[str, str], rdf: Any) -> Step:
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


__all__ = ["WEIGHTS_ORDER", "ZOO_TOLERANCE", "Description", "Output", "Weights", "output_steps", "read_description"]
