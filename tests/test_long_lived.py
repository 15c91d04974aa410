"""Long-lived clusters and processes: one Dask cluster and this process serve runs with other
configs, activations, constructor kwargs and weights in turn; each run equals its own
definition (own nets: the same job in a new net built from its files; models: the whole-volume
forward), whatever ran before it on the same workers or in the same process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import save_file

import densepred
from densepred.networks.loading import load_model
from densepred.networks.weights import save_weights
from tests.conftest import make_config
from tests.test_foreign import trained_looking

MODELS = '''import torch
from torch import nn


class Pooled(nn.Module):
    """The same weights whatever ``pool``: only the graph changes with it."""

    def __init__(self, pool=2):
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        y = nn.functional.max_pool3d(self.conv(x), self.pool)
        return nn.functional.interpolate(y, scale_factor=self.pool, mode="nearest")
'''

SHAPE = (24, 48, 40)  # a multiple of every factor: no padding at the high end


def stored(path):
    return np.asarray(zarr.open_group(path, mode="r")["0"][:])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    relu = make_config(folder, seed=1)
    tanh = folder / "tanh.toml"
    tanh.write_text(relu.read_text().replace("[network]\n", '[network]\nactivation = "tanh"\n'))
    other = folder / "other.safetensors"
    torch.manual_seed(5)
    save_weights(densepred.build_net(densepred.load_config(relu)), other)
    (folder / "models.py").write_text(MODELS)
    for seed in (1, 2):
        model = trained_looking(load_model(f"{folder / 'models.py'}:Pooled"), seed=seed).float()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"pooled{seed}.safetensors")
    np.save(folder / "in.npy", np.random.default_rng(17).random(SHAPE, dtype=np.float32))
    return folder


def own_runs(folder):
    """(name, job options): a relu net, the same weights under tanh, then other weights."""
    weights = folder / "run" / "stream-LAST.safetensors"
    return [("relu", {"config": folder / "stream.toml", "weights": weights}),
            ("tanh", {"config": folder / "tanh.toml", "weights": weights}),
            ("other", {"config": folder / "stream.toml", "weights": folder / "other.safetensors"})]


def model_runs(folder):
    """(name, job options): kwargs, activation and weights changed one at a time."""
    model = f"{folder / 'models.py'}:Pooled"
    return [(f"{name}-{i}", {"config": None, "model": model, "model_kwargs": {"pool": pool}, "activation": activation,
                             "weights": str(folder / f"pooled{seed}.safetensors")})
            for i, (name, pool, activation, seed) in enumerate([("p2", 2, "softmax", 1), ("p4", 4, "softmax", 1),
                                                                 ("identity", 4, "identity", 1),
                                                                 ("w2", 4, "identity", 2)])]


def whole_forward(folder, options):
    model = load_model(options["model"], options["model_kwargs"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in _tensors(options["weights"]).items()})
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(np.load(folder / "in.npy"))[None, None])[0]
    return (torch.softmax(logits, 0) if options["activation"] == "softmax" else logits).numpy()


def _tensors(path):
    from safetensors.numpy import load_file

    return load_file(path)


def job(folder, output, options, **extra):
    options = dict(options)
    config = options.pop("config")
    return densepred.PredictJob(config, str(folder / "in.npy"), str(folder / output), progress=False, mirror=config
                                is not None, levels=1, **options, **extra)


@pytest.mark.slow  # about 11 s: make test-slow
def test_one_cluster_and_one_process_serve_runs_of_other_nets_in_turn(files):
    from distributed import Client, LocalCluster

    own, models = own_runs(files), model_runs(files)
    references = {name: stored(densepred.predict_to_file(job(files, f"ref-{name}.zarr", o)).output.path)
                  for name, o in own}
    assert not np.allclose(references["relu"], references["tanh"], atol=1e-3)  # the runs differ
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for round_ in range(2):  # the second round runs every net again after the others
            for name, options in own:
                out = f"cluster-{name}-{round_}.zarr"
                densepred.predict_to_file(job(files, out, options), client)
                np.testing.assert_allclose(stored(files / out), references[name], rtol=0, atol=1e-6, err_msg=name)
            for name, options in models:
                expected = whole_forward(files, options)
                for where, client_ in (("cluster", client), ("process", None)):
                    out = f"{where}-{name}-{round_}.zarr"
                    densepred.predict_to_file(job(files, out, options, mode="exact", tile=(16, 24, 24)), client_)
                    np.testing.assert_allclose(stored(files / out), expected, rtol=0, atol=1e-5,
                                               err_msg=f"{name} in the {where}")
