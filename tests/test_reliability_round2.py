"""Defects of the newer paths (clusters, models from elsewhere, bioimage.io), found by review:
each test failed before its fix. The numbers are the review's (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import densepred
from densepred.interfaces.cli import main
from densepred.io.output_checks import record_folder as record_path
from densepred.networks.processing import Step
from densepred.networks.weights import save_weights
from densepred.running.executors.blocks import NetPayload
from densepred.running.executors.model_blocks import ModelPayload
from tests.conftest import make_config, mark_interrupted
from tests.test_foreign_files import KWARGS, SOURCE, stored
from tests.test_foreign_files import predict as predict_model
from tests.test_predict_files import predict
from tests.test_reliability_files import one_error_line


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(23).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return data


# -- 2, 3. a long-lived cluster never serves one run with another run's net ----------------------

def test_own_net_payloads_differ_when_only_the_config_differs(tmp_path):
    relu = densepred.load_config(make_config(tmp_path))
    tanh_text = (tmp_path / "stream.toml").read_text().replace("[network]\n", '[network]\nactivation = "tanh"\n')
    (tmp_path / "tanh.toml").write_text(tanh_text)
    tanh = densepred.load_config(tmp_path / "tanh.toml")
    weights = tmp_path / "w.safetensors"
    save_weights(densepred.build_net(relu), weights)
    assert NetPayload.from_files(relu, weights).key != NetPayload.from_files(tanh, weights).key
    assert NetPayload.from_files(relu, weights).key == NetPayload.from_files(relu, weights).key


def test_model_payloads_differ_in_activation_dims_and_channels(tmp_path):
    (tmp_path / "tiny.py").write_text(SOURCE)
    model = f"{tmp_path / 'tiny.py'}:Tiny"
    net = densepred.from_torch(densepred.networks.loading.load_model(model), dims=3, in_channels=1)

    def key(**changes):
        job = densepred.PredictJob(None, "in.npy", "out.zarr", model=model, **{"activation": "softmax", **changes})
        return ModelPayload.from_job(job, net).key

    assert len({key(), key(activation="identity"), key(in_channels=2), key(dims=2)}) == 4


# -- 4. the contract cache knows constructor kwargs ----------------------------------------------

class Pooled(nn.Module):
    """Same weights whatever ``pool``: only the graph changes with it."""

    def __init__(self, pool=2):
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        y = nn.functional.max_pool3d(self.conv(x), self.pool)
        return nn.functional.interpolate(y, scale_factor=self.pool, mode="nearest")


def test_the_same_class_and_weights_with_other_kwargs_are_probed_afresh():
    volume = np.random.default_rng(3).random((24, 40, 40), dtype=np.float32)
    torch.manual_seed(4)
    first = Pooled(2).eval()
    for pool in (2, 4):
        model = Pooled(pool).eval()
        model.load_state_dict(first.state_dict())
        net = densepred.from_torch(model, dims=3, in_channels=1, output="identity")
        assert net.contract.factor == (pool,) * 3
        got = densepred.predict_dense(net, volume, mode="exact", tile_shape=(16, 24, 24))
        with torch.inference_mode():
            expected = model(torch.from_numpy(volume)[None, None])[0].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# -- 5. bioimage.io preprocessing acts on the values as stored -----------------------------------

def test_fixed_normalisation_of_a_uint8_image_uses_its_stored_values():
    model = nn.Conv3d(1, 1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    net = densepred.from_torch(model.eval(), dims=3, in_channels=1, output="identity")
    net.preprocessing = (Step("fixed_zero_mean_unit_variance", {"mean": 103.5, "std": 13.7}),)
    image = np.random.default_rng(5).integers(60, 160, (9, 21, 17)).astype(np.uint8)
    got = densepred.predict_dense(net, image, mode="exact")
    expected = (image.astype(np.float64) - 103.5) / 13.7
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-4)


# -- 6. two outputs never share one record -------------------------------------------------------

def test_zarr_keys_a_slash_b_and_a_dot_b_have_their_own_records(config, volume, tmp_path):
    slash, dot = densepred.io.ArraySpec.parse(f"{tmp_path}/col.zarr:a/b"), densepred.io.ArraySpec.parse(
        f"{tmp_path}/col.zarr:a.b")
    assert record_path(slash) != record_path(dot)
    assert predict(config, tmp_path, f"{tmp_path}/c.zarr:a.b") == 0
    assert predict(config, tmp_path, f"{tmp_path}/c.zarr:a/b") == 0
    assert record_path(densepred.io.ArraySpec.parse(f"{tmp_path}/c.zarr:a/b")).name == "c.zarr.a%2Fb.densepred"


# -- 7. training never writes over the user's own config -----------------------------------------

def test_train_with_the_config_in_its_save_dir_keeps_the_config(tmp_path):
    from tests.test_training import write_config

    text = write_config(tmp_path, steps=2).read_text().replace('save_dir = "run"\n', "")
    named = tmp_path / "tiny.toml"  # name = "tiny", save_dir the config's own folder
    named.write_text("# my own notes\n" + text)
    densepred.train(named, steps=2)
    assert named.read_text() == "# my own notes\n" + text
    assert named.with_name(named.stem + ".trained.toml").exists()


# -- 8, 9. files densepred did not write are never replaced; links are not followed --------------

@pytest.mark.parametrize("name", ["mine.npy", "mine.tif"])
def test_overwrite_refuses_a_numpy_or_tiff_file_densepred_never_wrote(config, volume, tmp_path, capsys, name):
    mine = tmp_path / name
    mine.write_bytes(b"the user's own data")
    one_error_line(capsys, predict(config, tmp_path, str(mine), "--overwrite"), "was not written by densepred")
    assert mine.read_bytes() == b"the user's own data"
    fresh = tmp_path / f"fresh{mine.suffix}"
    assert predict(config, tmp_path, str(fresh)) == 0
    assert predict(config, tmp_path, str(fresh), "--overwrite") == 0  # its own output: replaced


@pytest.mark.parametrize("name", ["link.npy", "link.tif"])
def test_a_dangling_symlink_output_is_refused(config, volume, tmp_path, capsys, name):
    (tmp_path / name).symlink_to(tmp_path / "elsewhere" / "target")
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / name)), "symbolic link")
    assert not (tmp_path / "elsewhere").exists()


# -- 11, 12. a run resumes with the command that started it --------------------------------------

def test_an_auto_stream_resumes_with_mode_auto(config, volume, tmp_path):
    out = tmp_path / "auto.zarr"
    args = ["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output", str(out), "--quiet",
            "--mode", "stream"]
    assert main(args) == 0
    mark_interrupted(out)
    assert main([*args[:-2], "--mode", "auto", "--resume"]) == 0


def test_a_model_run_that_blended_resumes_with_mode_auto(tmp_path):
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.Conv3d(4, 2, 1)).eval()
    (tmp_path / "norm.py").write_text(
        "from torch import nn\n\ndef Norm():\n    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), "
        "nn.InstanceNorm3d(4), nn.Conv3d(4, 2, 1))\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "norm.safetensors")
    np.save(tmp_path / "in.npy", np.random.default_rng(8).random((20, 30, 30), dtype=np.float32))
    args = ["predict", "--model", f"{tmp_path / 'norm.py'}:Norm", "--weights", str(tmp_path / "norm.safetensors"),
            "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.zarr"), "--quiet", "--tile", "12,16,16"]
    assert main([*args, "--mode", "auto"]) == 0
    mark_interrupted(tmp_path / "o.zarr")
    assert main([*args, "--mode", "auto", "--resume"]) == 0


# -- 10. a model's default window on a cluster is sized to the workers' memory --------------------

@pytest.mark.slow  # 6 s: a local cluster
def test_a_model_cluster_run_sizes_its_default_window_to_the_workers_memory(tmp_path, monkeypatch):
    import dask
    from distributed import Client, LocalCluster

    from densepred.networks import memory_budget
    from densepred.running.executors import cluster

    trained_for_cli(tmp_path)
    np.save(tmp_path / "in.npy", np.random.default_rng(4).random((56, 64, 64), dtype=np.float32))
    job = densepred.PredictJob(None, str(tmp_path / "in.npy"), str(tmp_path / "here.zarr"),
                               model="tests.test_foreign:UNet", model_kwargs=KWARGS,
                               weights=str(tmp_path / "unet.safetensors"), mode="exact", progress=False)
    here = densepred.predict_to_file(job)
    # workers in this process with a 48 MiB memory limit: the planner must size the window to
    # their share of it, not to this machine's free memory (the workers' memory pausing off);
    # the process's own memory held still, as a worker process's would be
    for module in (memory_budget, cluster):
        monkeypatch.setattr(module, "resident_bytes", lambda: 2**30)
    off = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")}
    with dask.config.set(off), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                            memory_limit=48 * 2**20,
                                            dashboard_address=None) as cluster, Client(cluster) as client:
        there = densepred.predict_to_file(replace(job, output=str(tmp_path / "there.zarr")), client)
    assert math.prod(there.input_tile) < math.prod(here.input_tile)
    assert there.tiles > here.tiles
    np.testing.assert_allclose(stored(tmp_path / "there.zarr"), stored(tmp_path / "here.zarr"), rtol=0, atol=1e-6)


# -- 13. mistakes in a model's arguments or file are one line -------------------------------------

@pytest.mark.parametrize(("kwargs", "source", "message"), [
    ('{"depht": 2}', None, "unexpected keyword"),
    ("{}", "def broken(:\n", "syntax error"),
    ("{}", "raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
])
def test_model_argument_and_file_mistakes_are_one_line(tmp_path, capsys, kwargs, source, message):
    np.save(tmp_path / "in.npy", np.zeros((8, 8, 8), np.float32) + 0.5)
    model = "tests.test_foreign:UNet"
    if source is not None:
        (tmp_path / "bad.py").write_text(source)
        model = f"{tmp_path / 'bad.py'}:Net"
    code = main(["predict", "--model", model, "--model-kwargs", kwargs, "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "o.zarr"), "--quiet"])
    one_error_line(capsys, code, message)
    assert not (tmp_path / "o.zarr").exists()


# -- 14, 15. cluster options are checked before anything is written ------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    (["--workers", "-1"], "workers = -1 is invalid"),
    (["--workers", "0"], "workers = 0 is invalid"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "exclude each other"),
])
def test_model_cluster_options_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    trained_for_cli(tmp_path)
    one_error_line(capsys, predict_model(tmp_path, "o.zarr", *extra), message)
    assert not (tmp_path / "o.zarr").exists()
    assert not (tmp_path / "o.zarr.densepred").exists()


def test_an_unreachable_scheduler_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("densepred.running.executors.cluster.CONNECT_TIMEOUT", "1s")
    trained_for_cli(tmp_path)
    one_error_line(capsys, predict_model(tmp_path, "o.zarr", "--scheduler", "tcp://127.0.0.1:1"),
                   "cannot reach the Dask scheduler")
    assert not (tmp_path / "o.zarr").exists()
    assert not (tmp_path / "o.zarr.densepred").exists()


def trained_for_cli(tmp_path):
    from tests.test_foreign import UNet, trained_looking

    model = trained_looking(UNet(), seed=7).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet.safetensors")
    np.save(tmp_path / "in.npy", np.random.default_rng(12).random((20, 24, 24), dtype=np.float32))
    return model


# -- 16. a 2D model over a stack takes z,y,x shapes ----------------------------------------------

def test_a_2d_model_over_a_stack_takes_zyx_tile_and_chunks(tmp_path):
    torch.manual_seed(6)
    model = nn.Conv2d(1, 2, 3, padding=1).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "c.safetensors")
    (tmp_path / "c.py").write_text("from torch import nn\n\ndef Net():\n    return nn.Conv2d(1, 2, 3, padding=1)\n")
    stack = np.random.default_rng(9).random((7, 33, 29), dtype=np.float32)
    np.save(tmp_path / "in.npy", stack)
    assert main(["predict", "--model", f"{tmp_path / 'c.py'}:Net", "--weights", str(tmp_path / "c.safetensors"),
                 "--dims", "2", "--activation", "identity", "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "o.zarr"), "--quiet", "--tile", "3,16,16", "--chunks", "2,16,16"]) == 0
    with torch.inference_mode():
        expected = model(torch.from_numpy(stack)[:, None]).numpy().transpose(1, 0, 2, 3)
    np.testing.assert_allclose(stored(tmp_path / "o.zarr"), expected, rtol=0, atol=1e-6)


# -- 17. the number of output channels costs no full-size forward --------------------------------

def test_the_channel_count_comes_from_the_small_memory_probe(tmp_path, monkeypatch):
    from densepred.running.compute.model_run import ModelRun

    trained_for_cli(tmp_path)
    calls = []
    original = ModelRun._compute  # every window's forward, one after another or in the pipeline

    def counted(self, x):
        calls.append(x)
        return original(self, x)

    monkeypatch.setattr(ModelRun, "_compute", counted)
    assert predict_model(tmp_path, "o.zarr", "--mode", "exact", "--tile", "20,24,24") == 0
    assert len(calls) == 1  # the one window of the volume, nothing more
    assert os.path.exists(tmp_path / "o.zarr")
    assert json.loads((tmp_path / "o.zarr.densepred" / "run.json").read_text())["complete"] is True
    assert KWARGS


def test_a_model_without_weights_resumes_only_with_the_parameters_it_started_with(tmp_path, capsys):
    """Found by the damaged-files campaign: a model given without --weights (its constructor's
    parameters) was resumed by a process whose constructor drew other random parameters, and
    the output mixed two nets. The record now keeps a hash of the parameters."""
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((12, 30, 28), dtype=np.float32))
    argv = ["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", KWARGS, "--input",
            str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.zarr"), "--quiet", "--mode", "exact"]
    torch.manual_seed(5)
    assert main(argv) == 0
    mark_interrupted(tmp_path / "o.zarr")
    torch.manual_seed(6)
    assert main([*argv, "--resume"]) == 2
    assert "parameters_sha256" in capsys.readouterr().err
    torch.manual_seed(5)
    assert main([*argv, "--resume"]) == 0
