"""Shared helpers: random networks and the window-by-window definition of dense prediction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import densepred
from densepred.networks import DenseNet
from densepred.networks.weights import save_weights


def pytest_configure(config):
    """Under pytest-xdist each worker process gets its share of the cores, so parallel tests do
    not oversubscribe them (results do not depend on the thread count beyond float32 rounding,
    which every comparison allows)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def make_net(network: dict, seed: int = 0, dtype: torch.dtype = torch.float64) -> DenseNet:
    """A random network with random batch-norm statistics, in eval mode.

    The output layer is scaled up so that probabilities are far from uniform and a wrong
    voxel cannot hide in a softmax that is flat everywhere.
    """
    torch.manual_seed(seed)
    net = densepred.build_net(densepred.config_from_dict({"network": network})).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 2 - 1)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
        net.blocks[-1].transform.weight.mul_(8.0)
    return net.eval()


def reference_logits(net: DenseNet, image: np.ndarray, mirror: bool = False) -> np.ndarray:
    """The definition: the net applied to every FOV-sized window separately, in float64.

    ``image`` is ``(C, *S)``; returns ``(n_classes, *out)`` logits.
    """
    geometry = net.geometry
    if mirror:
        pad = [(0, 0)] + [(lo, hi) for lo, hi in zip(geometry.offset, geometry.border_high, strict=True)]
        image = np.pad(image, pad, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(image, geometry.fov, axis=tuple(range(1, image.ndim)))
    out_shape = windows.shape[1:1 + geometry.ndim]
    # (C, *out, *fov) -> (N, C, *fov)
    windows = np.moveaxis(windows, 0, geometry.ndim).reshape(-1, image.shape[0], *geometry.fov)
    reference = net.double().eval()
    chunks = []
    with torch.no_grad():
        for first in range(0, len(windows), 512):
            batch = torch.from_numpy(np.array(windows[first:first + 512], dtype=np.float64))
            chunks.append(reference(batch).reshape(len(batch), -1).numpy())
    logits = np.concatenate(chunks)  # (N, K)
    return np.moveaxis(logits.reshape(*out_shape, -1), -1, 0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=0, keepdims=True)


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng(abs(hash(request.node.nodeid)) % 2**32)


# Small networks that cover what the engines must get right.
NETS = {
    "2d_pool2": {
        "dims": 2, "in_channels": 1, "n_classes": 3,
        "layers": [{"filters": 4, "kernel": 3, "pool": 2}, {"filters": 5, "kernel": 2, "pool": 2},
                   {"filters": 4, "kernel": 3}],
    },
    "2d_pool3_mixed": {
        "dims": 2, "in_channels": 2, "n_classes": 2, "activation": "tanh", "batchnorm": True, "dropout": 0.3,
        "layers": [{"filters": 3, "kernel": [2, 3], "pool": [3, 2]}, {"filters": 4, "kernel": 2, "pool": 2}],
        "output_kernel": [2, 1],
    },
    "2d_mlp": {
        "dims": 2, "in_channels": 1, "n_classes": 2, "activation": "leaky_relu", "dropout": 0.5,
        "layers": [{"filters": 4, "kernel": 3, "pool": 2}, {"filters": 4, "kernel": 2, "pool": 3}],
        "mlp": [7, 5], "patch_size": [16, 22], "batchnorm": True,
    },
    "3d_aniso": {
        "dims": 3, "in_channels": 1, "n_classes": 2, "batchnorm": True,
        "layers": [{"filters": 3, "kernel": [1, 3, 3], "pool": [1, 2, 2]},
                   {"filters": 4, "kernel": [2, 3, 2], "pool": [2, 3, 2]},
                   {"filters": 3, "kernel": [1, 2, 2]}],
    },
    "3d_mlp": {
        "dims": 3, "in_channels": 2, "n_classes": 3, "activation": "elu", "dropout": 0.2,
        "layers": [{"filters": 3, "kernel": 2, "pool": 2}, {"filters": 3, "kernel": [1, 2, 2], "pool": [1, 2, 2]}],
        "mlp": [6], "patch_size": [7, 11, 11],
    },
}


@pytest.fixture(autouse=True, scope="session")
def _probe_cache_in_a_temporary_folder(tmp_path_factory):
    """Probed tiling contracts are cached under $XDG_CACHE_HOME: never the user's own in tests."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    # the profiler's matmul peak on 1024^2 matrices: the tests read no figure of it, and 4096^2
    # (about 7 s on a 2-core machine) is paid by every measuring process they start
    os.environ.setdefault("DENSEPRED_PEAK_MATRIX", "1024")
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture
def emulated_precision(monkeypatch):
    """bfloat16 and float16 run on this CPU even without their instructions (PyTorch's generic
    kernels, same arithmetic, slower), so every reduced-precision path is tested on any CPU. A
    profile's matrix-product peak is then measured on 256^2 (emulated, 1024^2 took 15 s)."""
    from densepred.networks.precision import EMULATE_VARIABLE

    monkeypatch.setenv(EMULATE_VARIABLE, "1")
    monkeypatch.setenv("DENSEPRED_PEAK_MATRIX", "256")


@pytest.fixture(autouse=True)
def _every_ome_zarr_output_is_valid(request):
    """After each test, every OME-Zarr image a test left in its tmp_path must validate with
    ome-zarr-models (images, and label images for --argmax outputs)."""
    yield
    folder = getattr(request.node, "funcargs", {}).get("tmp_path")
    if folder is None:
        return
    import json

    import zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    for meta in folder.rglob("zarr.json"):
        attributes = json.loads(meta.read_text()).get("attributes", {})
        ome = attributes.get("ome", {})
        if "multiscales" not in ome:
            continue
        group = zarr.open_group(meta.parent, mode="r")
        (ImageLabel if "image-label" in ome else Image).from_zarr(group)


# A small anisotropic 3D net with trained-looking (sharp) outputs, saved as LAST: the file tests' network.
CONFIG = """name = "stream"
save_dir = "run"

[network]
dims = 3
in_channels = 1
n_classes = 3
layers = [
  { filters = 5, kernel = [1, 3, 3], pool = [1, 2, 2] },
  { filters = 6, kernel = 3 },
]
"""


def make_config(folder: Path, seed: int = 0) -> Path:
    path = folder / "stream.toml"
    path.write_text(CONFIG)
    torch.manual_seed(seed)
    net = densepred.build_net(densepred.load_config(path))
    with torch.no_grad():
        net.blocks[-1].transform.weight.mul_(40.0)  # probabilities far from uniform
    save_weights(net, folder / "run" / "stream-LAST.safetensors")
    return path


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


def mark_interrupted(output) -> None:
    """Turn a finished run's record back into an interrupted one, so ``--resume`` takes it up."""
    import json

    record = Path(str(output) + ".densepred") / "run.json"
    state = json.loads(record.read_text())
    state["complete"] = False
    record.write_text(json.dumps(state))
