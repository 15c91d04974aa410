"""The arithmetic a prediction computes in: a user's choice, checked against the device.

* ``float32`` (the default): true float32 everywhere; TF32 is off while densepred computes, so
  every engine and tile gives the same numbers (docs/PRECISION.md).
* ``tf32``: float32 storage, convolutions and matrix products rounded to TF32 (a 10-bit
  mantissa) on NVIDIA GPUs from Ampere on.
* ``bfloat16`` and ``float16``: weights and activations in that type; softmax, the blend's sums
  and everything written stay float32. densepred's own nets run wholly in the type; a model
  written elsewhere runs under ``torch.autocast`` (its normalisations stay float32).

The TF32 switches are PyTorch globals: :func:`precision_flags` sets them only while densepred's
own calls compute and gives the caller's settings back, so the user's code keeps its choice.

A CPU without bfloat16 or float16 instructions refuses them: PyTorch's generic kernels compute
the same arithmetic several times slower than float32. ``DENSEPRED_EMULATE_PRECISION=1`` runs
them there all the same, to check on a laptop what a GPU's 16-bit run will give (the test suite
checks every reduced-precision path so on any CPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config.schema import PRECISIONS
from ..errors import DensePredError

log = logging.getLogger("densepred")
EMULATE_VARIABLE = "DENSEPRED_EMULATE_PRECISION"  # "1": 16-bit types on CPUs without their instructions
# float64 is no user choice, but the engines' exactness is checked in it against the definition
_DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}


@dataclass(frozen=True)
class Precision:
    """A checked precision: its name, the dtype tensors are stored in, whether TF32 is on."""

    name: str = "float32"

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def tf32(self) -> bool:
        return self.name == "tf32"

    @property
    def reduced(self) -> bool:
        """Whether tensors are stored in a 16-bit type."""
        return self.dtype != torch.float32


FLOAT32 = Precision("float32")


def precision_for(name: str | Precision | torch.dtype | None, device: torch.device) -> Precision:
    """``name`` (or a torch dtype) checked against ``device``: one line saying what is wrong and
    what would run."""
    if isinstance(name, Precision):
        name = name.name
    name = "float32" if name is None else str(name).lower().removeprefix("torch.")
    if name == "float64":
        return Precision(name)
    if name not in PRECISIONS:
        raise DensePredError(f"precision {name!r} is invalid; valid: {', '.join(PRECISIONS)}")
    if name == "float32":
        return FLOAT32
    missing = _missing_kernels(name, device)
    if missing:
        valid = ", ".join(runnable_precisions(device))
        raise DensePredError(f"precision {name} cannot run on {device}: {missing}; valid there: {valid}")
    if device.type == "cpu":
        instructions, lacking = _cpu_instructions(name)
        if lacking:  # allowed above only through EMULATE_VARIABLE
            warn_emulated(name, instructions)
    return Precision(name)


def runnable_precisions(device: torch.device) -> list[str]:
    """The precisions ``device`` has kernels for, float32 first."""
    return [name for name in PRECISIONS if name == "float32" or not _missing_kernels(name, device)]


def _missing_kernels(name: str, device: torch.device) -> str:
    """Why ``device`` has no fast kernels for precision ``name``; empty when it has."""
    if device.type == "cuda":
        return _missing_on_cuda(name, device)
    if device.type == "cpu":
        return _missing_on_cpu(name)
    return f"densepred runs reduced precision on cpu and cuda devices only, not {device.type}"


def _missing_on_cuda(name: str, device: torch.device) -> str:
    if name == "tf32" and torch.cuda.get_device_capability(device)[0] < 8:
        return "TF32 needs an NVIDIA GPU of compute capability 8.0 (Ampere) or later"
    if name == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 kernels"
    return ""


def _missing_on_cpu(name: str) -> str:
    if name == "tf32":
        return "TF32 is a mode of NVIDIA GPUs"
    instructions, lacking = _cpu_instructions(name)
    if not lacking or os.environ.get(EMULATE_VARIABLE) == "1":
        return ""
    return (f"this CPU has no {name} instructions ({instructions}); it would run slower than float32 "
            f"({EMULATE_VARIABLE}=1 runs it all the same, to check its numbers)")


def _cpu_instructions(name: str) -> tuple[str, bool]:
    """The instructions a CPU computes 16-bit type ``name`` with, and whether this one lacks them
    (float32 and tf32: none needed)."""
    supported = {"bfloat16": (torch.ops.mkldnn._is_mkldnn_bf16_supported, "AVX-512-BF16 or AMX"),
                 "float16": (torch.ops.mkldnn._is_mkldnn_fp16_supported, "AVX-512-FP16 or AMX-FP16")}
    if name not in supported:
        return "", False
    check, instructions = supported[name]
    return instructions, not check()


@functools.cache
def warn_emulated(name: str, instructions: str) -> None:
    """Says once per process (``warn_emulated.cache_clear()`` resets it) that ``name`` is emulated."""
    log.warning("%s is emulated on this CPU (it has no %s; %s=1): %s's numbers at several times float32's "
                "time", name, instructions, EMULATE_VARIABLE, name)


@contextlib.contextmanager
def precision_flags(precision: Precision = FLOAT32) -> Iterator[None]:
    """TF32 in cuDNN convolutions and cuBLAS matrix products on for ``tf32``, off otherwise,
    while the block runs; then the caller's settings back.

    On Ampere and later GPUs PyTorch lets cuDNN round convolution inputs to TF32 by default, so
    float32 engines would agree only to ~1e-3 and the profiler's "fraction of the float32 peak"
    could pass 1. densepred computes float32 in true float32 unless TF32 is asked for.
    """
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision.tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device) -> Iterator[None]:
    """A model written elsewhere computing in ``precision``: ``torch.autocast`` for the 16-bit
    types (PyTorch keeps normalisations and reductions in float32 there), the TF32 switches
    for the rest."""
    with precision_flags(precision):
        if not precision.reduced:
            yield
            return
        with torch.autocast(device.type, dtype=precision.dtype):
            yield
