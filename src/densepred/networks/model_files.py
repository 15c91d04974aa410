"""Models stored whole in one file: a ``torch.export`` program (``.pt2``), a TorchScript archive
(``torch.jit.save``) or an ONNX graph (``.onnx``, run by onnxruntime on the CPU).

Which one a file is comes from its contents, not its name: a zip holding ``code/`` and
``constants.pkl`` is TorchScript, one holding ``models/`` or ``archive_format`` a ``torch.export``
program, and a protobuf an ONNX graph. Each becomes a ``torch.nn.Module`` mapping ``(N, C, *S)``
to its outputs, so densepred probes and tiles it like any other model.

What loading runs: a ``.pt2`` program is unpickled by ``torch.export.load`` (load only files you
trust); TorchScript's loader builds tensors and TorchScript code (a restricted language
without access to Python's modules); an ONNX graph is data run by onnxruntime's operators.
``pip install 'densepred[onnx]'`` installs onnxruntime.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DensePredError

log = logging.getLogger("densepred")
FORMATS = ("torch_export", "torchscript", "onnx")


def file_format(path: Path) -> str:
    """``torch_export``, ``torchscript`` or ``onnx``, by what the file holds."""
    if not path.is_file():
        raise DensePredError(f"model file {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        parts = {part for name in names for part in name.split("/")[1:2]}
        if "code" in parts and "constants.pkl" in parts:
            return "torchscript"
        if {"models", "archive_format", "version"} & parts or path.suffix == ".pt2":
            return "torch_export"
        raise DensePredError(f"model file {path} is a zip archive but neither a torch.export program (.pt2) nor a "
                             "TorchScript archive (torch.jit.save); a state dict goes in --weights with --model")
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(path):
        return "onnx"
    raise DensePredError(f"model file {path} is not a torch.export program (.pt2), a TorchScript archive or an "
                         "ONNX graph (.onnx)")


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX ModelProto starts with its ir_version field (tag 0x08) and a small version number."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x08 and 3 <= head[1] <= 20


def load_file_model(path: str | Path) -> torch.nn.Module:
    """The model stored in ``path`` (see the module docstring), in eval mode where it has one."""
    path = Path(path)
    kind = file_format(path)
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu").eval()
        if kind == "onnx":
            return OnnxModel(path)
        return _exported(torch.export.load(str(path)), path)
    except DensePredError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise DensePredError(f"cannot load {path} as a {kind.replace('_', '.')} model: {text}") from None


def _exported(program: Any, path: Path) -> torch.nn.Module:
    """A torch.export program's module; one exported for one input size only (no dynamic
    spatial sizes) as a :class:`FixedExport`, tiled with windows of exactly that size."""
    module = program.module()
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in
              program.graph_signature.user_inputs]
    shape = tuple(getattr(inputs[0].meta.get("val"), "shape", ())) if inputs else ()
    spatial = shape[2:]
    if not spatial or not all(isinstance(s, int) for s in spatial):
        return module
    log.info("%s was exported for the input size %s only: windows are exactly that size (export with "
             "dynamic_shapes, a torch.export.Dim per spatial axis, to tile with any size)", path.name, list(spatial))
    return FixedExport(module, tuple(spatial))


class FixedExport(torch.nn.Module):
    """A torch.export program that accepts one input size: its module and that size."""

    def __init__(self, module: torch.nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.module, self.shape = module, shape

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x)

    def fixed_shape(self) -> tuple[int, ...]:
        return self.shape


class OnnxModel(torch.nn.Module):
    """An ONNX graph run by onnxruntime on the CPU: float32 in, its first output out (every
    output, as a tuple, when it has several). Inputs on another device are copied to the CPU
    and the outputs back. Pickles as the graph's bytes (a cluster worker builds its own session)."""

    def __init__(self, path: str | Path | None = None, data: bytes | None = None):
        super().__init__()
        self.data = data if data is not None else Path(path).read_bytes()  # type: ignore[arg-type]
        self.digest = hashlib.sha256(self.data).hexdigest()
        self.session = _session(self.data, path)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    nan_probe = False  # onnxruntime's max pooling may drop a NaN: its reach is probed by large changes

    def extra_repr(self) -> str:  # in the model's hash (densepred.networks.foreign)
        return f"onnx sha256={self.digest}"

    def fixed_shape(self) -> tuple[int, ...] | None:
        """The input's spatial shape when the graph fixes it, else None."""
        spatial = self.input_shape[2:]
        return tuple(spatial) if spatial and all(isinstance(s, int) and s > 0 for s in spatial) else None

    def forward(self, x: torch.Tensor) -> Any:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = [torch.from_numpy(np.asarray(y)).to(x.device) for y in
                   self.session.run(None, {self.input_name: array})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.session = _session(self.data, None)


def _session(data: bytes, path: Any) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise DensePredError(f"running the ONNX model {path or ''} needs onnxruntime: pip install "
                             "'densepred[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: a probe of a size the graph refuses is no error
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class OneOutput(torch.nn.Module):
    """A model with several outputs (a tuple, list or dict) seen as the one at ``index``."""

    def __init__(self, model: torch.nn.Module, index: int | str):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pick_output(self.model(x), self.index)

    @property
    def nan_probe(self) -> bool:  # type: ignore[override]
        return getattr(self.model, "nan_probe", True)

    def fixed_shape(self) -> tuple[int, ...] | None:
        fixed = getattr(self.model, "fixed_shape", None)
        return fixed() if callable(fixed) else None


def pick_output(result: Any, index: int | str) -> torch.Tensor:
    """Output ``index`` of a model's result (itself when it is one tensor and ``index`` is 0)."""
    if isinstance(result, torch.Tensor):
        if index not in (0, "0"):
            raise DensePredError(f"output {index!r} does not exist: the model returns one tensor")
        return result
    if isinstance(result, dict):
        if index in result:
            return result[index]
        result = list(result.values())
    if isinstance(index, str):
        if not index.isdigit():
            raise DensePredError(f"output {index!r} does not exist: the model returns {len(result)} unnamed outputs; "
                                 f"give an index 0..{len(result) - 1}")
        index = int(index)
    if not 0 <= index < len(result):
        raise DensePredError(f"output {index} does not exist: the model returns {len(result)} outputs (0.."
                             f"{len(result) - 1})")
    return result[index]


__all__ = ["FORMATS", "OneOutput", "OnnxModel", "file_format", "load_file_model", "pick_output"]
