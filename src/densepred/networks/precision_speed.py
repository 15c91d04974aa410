"""A reduced precision that measured slower than float32, remembered per network and machine.

A device with bfloat16 or float16 kernels may still run a given network slower in them than
in float32 (small layers, conversions, a CPU whose 16-bit path is emulated). ``densepred
profile --precision P`` and ``densepred plan --measure --precision P`` (P not float32) time
float32 on the same tile too and keep both rates in
``$XDG_CACHE_HOME/densepred/precision/<key>.json``; the key hashes the network's layers,
the device's name, the torch version and P. ``densepred profile --model ... --precision P``
does the same for a model written elsewhere, keyed by its layers as PyTorch prints them
(:func:`model_layers`). A prediction in P of that network or model on that machine is then
refused in one line while the last measure found P slower; measuring again replaces the
verdict. Without a measure a precision runs wherever the device has its kernels
(:func:`~.precision.precision_for`). A cache that cannot be read or written is skipped: it
only remembers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import DensePredError
from ..files import atomic_write_text, cache_folder

log = logging.getLogger("densepred")

VERSION = 1


def device_name(device: torch.device) -> str:
    """The device's model: the GPU's name, or the CPU's model name and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def remember(network: Any, device: torch.device, precision: str, rate: float, float32_rate: float,
             measured: str, again: str = "densepred profile CONFIG") -> None:
    """Keep a measure of ``precision`` (``rate``) against float32 (``float32_rate``), output
    voxels/s of the same tile; ``measured`` says how (tool, mode and tile), ``again`` the
    command that measures it again (without ``--precision``)."""
    entry = {"precision": precision, "rate": rate, "float32_rate": float32_rate, "measured": measured,
             "device": device_name(device), "date": time.strftime("%Y-%m-%d"), "again": again}
    path = _path(network, device, precision)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry))
    except OSError as exc:
        log.debug("the %s measure is not kept in %s: %s", precision, path, exc)


def refuse_if_slower(network: Any, device: torch.device, precision: str) -> None:
    """Refuse ``precision`` for this network and device in one line if the last measure found
    it slower than float32."""
    if precision == "float32":
        return
    try:
        entry = json.loads(_path(network, device, precision).read_text(encoding="utf-8"))
        slower = float(entry["rate"]) < float(entry["float32_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if slower:
        raise DensePredError(slower_message(precision, entry["device"], entry["rate"], entry["float32_rate"],
                                            f"{entry['measured']}, {entry['date']}",
                                            entry.get("again", "densepred profile CONFIG")))


def slower_message(precision: str, device: str, rate: float, float32_rate: float, measured: str,
                   again: str = "densepred profile CONFIG") -> str:
    return (f"{precision} runs this network slower than float32 on {device}: {rate:,.0f} against "
            f"{float32_rate:,.0f} output voxels/s ({measured}); use --precision float32, or measure again "
            f"({again} --precision {precision}) if that has changed")


def model_layers(model: torch.nn.Module) -> dict[str, str]:
    """What keys a model written elsewhere: its layers as PyTorch prints them (their kinds,
    channels, kernels and strides decide its speed; its weights do not)."""
    return {"model": type(model).__qualname__, "layers": repr(model)}


MODEL_AGAIN = "densepred profile --model ..."  # what measures a model's verdict again


def model_key(net: Any) -> dict[str, str]:
    """The key of a :class:`~.foreign.ForeignNet`'s verdicts: its model's layers (a 2D model's
    own over a stack, so both share one verdict)."""
    return model_layers(getattr(net, "flat", net).model)


def _path(network: Any, device: torch.device, precision: str) -> Path:
    """``network``: the config's network section (its layers decide the speed, its weights do
    not), or a model's :func:`model_layers`."""
    layers = dataclasses.asdict(network) if dataclasses.is_dataclass(network) else network
    identity = [VERSION, layers, device_name(device), torch.__version__, precision]
    key = hashlib.sha256(json.dumps(identity, default=str, sort_keys=True).encode()).hexdigest()
    return cache_folder("precision") / f"{key}.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
