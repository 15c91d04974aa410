"""Loading a model written elsewhere for ``densepred predict --model``.

* ``--model package.module:Class`` (or ``path/to/file.py:Class``) with ``--model-kwargs JSON``
  builds the class; ``--weights`` loads its state dict from ``.safetensors`` (never runs code)
  or ``.pt``/``.pth`` through ``torch.load(weights_only=True)`` (tensors only).
* ``--model-file FILE`` loads a model stored whole: a ``torch.export`` program (``.pt2``, which
  unpickles: load only files you trust), a TorchScript archive or an ONNX graph
  (:mod:`.model_files`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import DensePredError
from .model_files import load_file_model

MAX_KWARGS_TEXT = 1_000_000  # characters of --model-kwargs JSON


def load_model(model: str | None = None, kwargs: dict[str, Any] | str | None = None,
               weights: str | Path | None = None, model_file: str | Path | None = None) -> torch.nn.Module:
    """The model named by ``model`` (with ``kwargs`` and ``weights``) or stored in ``model_file``."""
    if (model is None) == (model_file is None):
        raise DensePredError("give the model as --model package.module:Class (with --weights) or as "
                             "--model-file FILE (.pt2, TorchScript or .onnx), one of them")
    if model_file is not None:
        return load_file_model(model_file)
    cls, options = _model_class(model), _kwargs(kwargs)
    try:
        module = cls(**options)
    except Exception as exc:  # a wrong or missing keyword, or the model's own check of its arguments
        missing = missing_module(exc)
        if missing is not None:  # an optional import of the model's own (MONAI's UNETR needs einops)
            raise DensePredError(f"--model {model}: {cls.__name__} needs the Python module {missing!r}, which is "
                                 f"not installed here; install it (pip install {missing.split('.')[0]}, for most "
                                 "modules) and run again") from None
        raise DensePredError(f"--model {model}: {cls.__name__}(**{_short(options)}) failed: "
                             f"{type(exc).__name__}: {_first_line(exc)}; check --model-kwargs") from None
    if not isinstance(module, torch.nn.Module):
        raise DensePredError(f"--model {model}: {cls.__name__}(...) made a {type(module).__name__}, not a "
                             "torch.nn.Module")
    if weights is not None:
        _load_state(module, Path(weights))
    return module.eval()


def _model_class(spec: str) -> type:
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise DensePredError(f"--model {spec!r} is invalid; expected package.module:Class or path/to/file.py:Class")
    try:
        if where.endswith(".py"):
            path = Path(where)
            found = importlib.util.spec_from_file_location(path.stem, path)
            if found is None or not path.exists():
                raise DensePredError(f"--model {spec!r}: no file {path}")
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        missing = missing_module(exc)
        needs = (f": it needs the Python module {missing!r}, which is not installed here (pip install "
                 f"{missing.split('.')[0]}, for most modules)") if missing and not where.startswith(missing) else ""
        raise DensePredError(f"--model {spec!r}: cannot import {where} ({_first_line(exc)}){needs}") from None
    except SyntaxError as exc:
        raise DensePredError(f"--model {spec!r}: {exc.filename or where} line {exc.lineno}: syntax error "
                             f"({exc.msg})") from None
    except DensePredError:
        raise
    except Exception as exc:  # the module's own code failed while it was imported
        raise DensePredError(f"--model {spec!r}: importing {where} failed: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
    cls = getattr(module, name, None)
    if not callable(cls):
        raise DensePredError(f"--model {spec!r}: {where} has no class {name}")
    return cls


def missing_module(exc: BaseException) -> str | None:
    """The module whose absence ``exc`` (or an exception it was raised from) reports, if any:
    a ``ModuleNotFoundError``, or a library's own optional-import error that names it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        found = re.search(r"No module named '([\w.]+)'", str(exc))
        if found:
            return found.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no message"


def _short(options: dict[str, Any], limit: int = 120) -> str:
    text = repr(options)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kwargs(kwargs: dict[str, Any] | str | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        if len(kwargs) > MAX_KWARGS_TEXT:
            raise DensePredError(f"--model-kwargs is {len(kwargs):,} characters long, more than {MAX_KWARGS_TEXT:,}; "
                                 "keyword arguments are a small JSON object")
        try:
            kwargs = json.loads(kwargs)
        except (json.JSONDecodeError, RecursionError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise DensePredError(f"--model-kwargs is not valid JSON ({why}); expected e.g. "
                                 "'{\"spatial_dims\": 3, \"out_channels\": 2}'") from None
    if not isinstance(kwargs, dict):
        raise DensePredError("--model-kwargs must be a JSON object of keyword arguments")
    return kwargs


def _load_state(module: torch.nn.Module, path: Path) -> None:
    if not path.exists():
        raise DensePredError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:
        raise DensePredError(f"cannot read the weights {path}: {_weights_reason(exc, path)}") from None
    if not isinstance(state, dict):
        raise DensePredError(f"{path} holds no state dict (a mapping of tensor names to tensors)")
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = [f"missing {', '.join(result.missing_keys[:4])}" if result.missing_keys else "",
                 f"unexpected {', '.join(result.unexpected_keys[:4])}" if result.unexpected_keys else ""]
        raise DensePredError(f"the weights in {path} do not fit the model: {'; '.join(p for p in parts if p)}")


def _weights_reason(exc: Exception, path: Path) -> str:
    """Why torch or safetensors could not read a weights file, in words that fit here (torch's own
    advice to load with ``weights_only=False`` would run the file's code: never here)."""
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return ("it holds Python objects besides tensors" + (f" ({found[1]})" if found else "") + ", and densepred "
                "loads tensors only (weights_only=True, so that loading runs no code): save the state dict alone "
                "(torch.save(model.state_dict(), ...)) or as safetensors")
    if path.suffix != ".safetensors" and not _is_zip_or_pickle(path):
        return "not a PyTorch weights file (torch.save's zip or pickle) nor safetensors"
    return " ".join(text.split())[:300] or type(exc).__name__


def _is_zip_or_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return head in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
