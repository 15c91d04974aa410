"""Weights and optimizer state in safetensors files: no pickle, written atomically.

A weights file is the network's ``state_dict``; its metadata records the training step.
A training run names its files ``<name>-LAST.safetensors`` (the latest) and
``<name>-BEST.safetensors`` (the lowest validation loss), as ELEKTRONN's ``*-LAST.param``.
Files are written to a temporary name in the same folder and renamed into place, so a
reader (or a run killed mid-write) only ever sees a complete old or a complete new file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import DensePredError
from ..files import atomic_path


def last_path(save_dir: Path, name: str) -> Path:
    """The latest weights of the run ``name`` in ``save_dir``."""
    return Path(save_dir) / f"{name}-LAST.safetensors"


def config_last(cfg: Any) -> Path:
    """The LAST weights of a config's training run (its ``save_dir`` and ``name``)."""
    if cfg.save_dir is None:
        raise DensePredError("the config has no save_dir; give the weights file (--weights FILE)")
    return last_path(cfg.save_dir, cfg.name)


def best_path(save_dir: Path, name: str) -> Path:
    """The weights with the lowest validation loss of the run ``name``."""
    return Path(save_dir) / f"{name}-BEST.safetensors"


def optimizer_path(save_dir: Path, name: str) -> Path:
    """The optimizer state saved beside LAST, for resuming training."""
    return Path(save_dir) / f"{name}-LAST.optimizer.safetensors"


def save_weights(net: torch.nn.Module, path: Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``net.state_dict()`` to ``path`` atomically; metadata values are stored as strings."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_save(tensors, path, {k: str(v) for k, v in (metadata or {}).items()})


def load_weights(net: torch.nn.Module, path: Path) -> dict[str, str]:
    """Load a weights file into ``net`` strictly; returns the file's metadata.

    Raises a :class:`DensePredError` naming the file and the tensor for a missing file, a
    file that is not safetensors, a missing or unexpected tensor, or a shape mismatch.
    """
    tensors, metadata = read_safetensors(path)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise DensePredError(f"weights in {path} do not fit this network: {'; '.join(parts)} "
                             "(was it trained with a different config?)")
    for name, value in expected.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise DensePredError(
                f"weights in {path} do not fit this network: tensor '{name}' has shape "
                f"{list(tensors[name].shape)} in the file but {list(value.shape)} in the network "
                "(was it trained with a different config?)"
            )
    net.load_state_dict(tensors, strict=True)
    return metadata


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise DensePredError(f"weights file not found: {path}")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DensePredError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None
    return tensors, metadata


def atomic_save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """Write a safetensors file atomically, with the permissions of a plainly written file."""
    with atomic_path(path) as tmp:
        save_file(dict(tensors), tmp, metadata=dict(metadata))


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path, step: int) -> None:
    """The optimizer's state: tensors in the file, everything else as JSON metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    metadata = {"step": str(step), "param_groups": json.dumps(state["param_groups"]),
                "scalars": json.dumps(scalars), "optimizer": type(optimizer).__name__.lower()}
    atomic_save(tensors, path, metadata)


def saved_optimizer_kind(path: Path) -> str:
    """``"adam"`` or ``"sgd"``: the optimizer whose state a file holds."""
    _, metadata = read_safetensors(path)
    if "optimizer" in metadata:
        return metadata["optimizer"]
    groups = json.loads(metadata.get("param_groups", "[{}]"))  # files from before the name was stored
    return "sgd" if groups and "momentum" in groups[0] and "betas" not in groups[0] else "adam"


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> int:
    """Restore an optimizer saved by :func:`save_optimizer`; returns the step it was saved at."""
    tensors, metadata = read_safetensors(path)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in json.loads(metadata.get("scalars", "{}")).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    except (KeyError, ValueError) as exc:
        raise DensePredError(f"optimizer state in {path} does not fit this network ({exc})") from None
    return int(metadata.get("step", 0))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parameters_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes of its parameters and
    buffers): what a run record keeps of a model given without a weights file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {values.dtype} {list(tensor.shape)}\n".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
