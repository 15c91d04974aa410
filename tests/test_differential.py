"""A differential campaign: random nets and U-Nets, random odd volumes and options, run file to
file, every stored voxel against the definition in float64 (own nets: the window-by-window
prediction; models: one forward of the whole volume, padded as the tiling pads it). A few
seeded examples in ``make test``, many in ``make test-slow``; then the defects it found."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import tomlkit
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import densepred
from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.io.arrays import open_array
from densepred.networks.weights import save_weights
from densepred.running.planning.model_window import smallest_exact
from tests.conftest import make_net, reference_logits, softmax
from tests.test_foreign import UNet, trained_looking, whole
from tests.test_reliability_files import one_error_line

OUTPUTS = {"zarr": "o.zarr", "zarr1": "o.zarr", "h5": "o.h5:p", "npy": "o.npy", "tif": "o.tif", "mrc": "o.mrc"}
FUZZ = {"deadline": None, "derandomize": True, "suppress_health_check": list(HealthCheck), "print_blob": True}


def per_axis(dims, values):
    return st.lists(values, min_size=dims, max_size=dims)


@st.composite
def own_runs(draw):
    """A valid network, an image, and the options of one run."""
    dims = draw(st.sampled_from([2, 3]))
    layer = st.fixed_dictionaries({"filters": st.integers(2, 4), "kernel": per_axis(dims, st.integers(1, 3)),
                                   "pool": per_axis(dims, st.sampled_from([1, 1, 2, 3]))})
    network = {"dims": dims, "in_channels": draw(st.sampled_from([1, 2])), "n_classes": draw(st.sampled_from([2, 3])),
               "activation": draw(st.sampled_from(["relu", "tanh", "elu"])), "batchnorm": draw(st.booleans()),
               "layers": draw(st.lists(layer, min_size=1, max_size=3))}
    try:
        geometry = densepred.build_net(densepred.config_from_dict({"network": network})).geometry
    except DensePredError:
        assume(False)
    mirror = draw(st.booleans())
    least = [max(o, b) + 1 for o, b in zip(geometry.offset, geometry.border_high, strict=True)] if mirror \
        else list(geometry.fov)
    shape = [draw(st.integers(m, m + 2 * f + 5)) for m, f in zip(least, geometry.fov, strict=True)]
    mode = draw(st.sampled_from(["auto", "mfp", "dilated", "naive", "stream"]))
    run = {"network": network, "shape": shape, "mirror": mirror, "mode": mode,
           "output": draw(st.sampled_from(sorted(OUTPUTS))), "depth": None, "roi": None, "tile": None,
           "classes": draw(st.none() | st.lists(st.integers(0, network["n_classes"] - 1), min_size=1, unique=True)),
           "batch_size": draw(st.sampled_from([None, 1, 2]))}
    if dims == 2 and draw(st.booleans()):
        run["depth"] = draw(st.integers(2, 4))  # a stack of 2D images
    elif draw(st.booleans()):
        low = [0] * dims if mirror else list(geometry.offset)
        high = shape if mirror else [n - b for n, b in zip(shape, geometry.border_high, strict=True)]
        starts = [draw(st.integers(lo, hi - 1)) for lo, hi in zip(low, high, strict=True)]
        run["roi"] = [(a, draw(st.integers(a + 1, hi))) for a, hi in zip(starts, high, strict=True)]
    if mode not in ("auto", "mfp") and draw(st.booleans()):
        run["tile"] = [draw(st.integers(f, f + 12)) for f in geometry.fov]
    return run


def run_own(tmp_path, run, seed=3, client=None):
    network, dims = run["network"], run["network"]["dims"]
    net = make_net(network, seed=seed, dtype=torch.float32)
    (tmp_path / "f.toml").write_text(tomlkit.dumps({"name": "f", "save_dir": str(tmp_path), "network": network}))
    save_weights(net, tmp_path / "f-LAST.safetensors")
    rng = np.random.default_rng(seed)
    channels, depth = network["in_channels"], run["depth"]
    image = rng.random((channels, *([depth] if depth else []), *run["shape"]), dtype=np.float32)
    np.save(tmp_path / "in.npy", image if channels > 1 else image[0])
    output = f"{tmp_path}/{OUTPUTS[run['output']]}"
    job = densepred.PredictJob(str(tmp_path / "f.toml"), str(tmp_path / "in.npy"), output, mirror=run["mirror"],
                               mode=run["mode"], tile=run["tile"], roi=run["roi"], batch_size=run["batch_size"],
                               classes=None if run["classes"] is None else sorted(run["classes"]), progress=False,
                               levels=1 if run["output"] == "zarr1" else None, device="cpu",
                               tiles_per_block=run.get("block"))
    densepred.predict_to_file(job, client=client)
    reference_net = net.double()
    slices = np.moveaxis(image, 1, 0) if depth else image[None]  # each (C, *shape)
    expected = np.stack([softmax(reference_logits(reference_net, s.astype(np.float64), mirror=run["mirror"]))
                         for s in slices], axis=1)
    expected = expected if depth else expected[:, 0]
    if run["classes"] is not None:
        expected = expected[sorted(run["classes"])]
    if run["roi"] is not None:
        shift = [0] * dims if run["mirror"] else list(net.geometry.offset)
        expected = expected[(slice(None), *(slice(a - s, b - s) for (a, b), s in zip(run["roi"], shift, strict=True)))]
    stored = stored_as(output, expected.shape)
    assert stored.shape == expected.shape, run
    np.testing.assert_allclose(stored, expected, rtol=0, atol=2e-5, err_msg=str(run))


def stored_as(output, shape):
    """The output as stored; an MRC file of one class has no axis for it (and reads back without)."""
    stored = np.asarray(open_array(output)[...])
    return stored.reshape(shape) if output.endswith(".mrc") and stored.size == math.prod(shape) else stored


@st.composite
def model_runs(draw):
    dims = draw(st.sampled_from([2, 3]))
    kwargs = {"dims": dims, "depth": draw(st.integers(1, 3)), "width": draw(st.sampled_from([2, 3])),
              "classes": draw(st.sampled_from([1, 2, 3])), "norm": draw(st.sampled_from(["batch", "none"])),
              "padding": draw(st.sampled_from([1, 0]))}
    return {"kwargs": kwargs, "shape": draw(per_axis(dims, st.integers(9, 60))), "window": draw(st.integers(0, 2)),
            "output": draw(st.sampled_from(sorted(OUTPUTS)))}


def run_model(tmp_path, run, seed=4, client=None):
    kwargs = run["kwargs"]
    model = trained_looking(UNet(**kwargs), seed=seed)
    save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    volume = np.random.default_rng(seed).random(run["shape"], dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    contract = densepred.from_torch(model, dims=kwargs["dims"], in_channels=1).contract
    # no window (sized by memory), or the smallest exact one plus 0 or 1 factor
    window = None if run["window"] == 2 else [w + run["window"] * f
                                              for w, f in zip(smallest_exact(contract), contract.factor, strict=True)]
    sigmoid = kwargs["classes"] == 1  # one channel is a probability
    output = f"{tmp_path}/{OUTPUTS[run['output']]}"
    job = densepred.PredictJob(None, str(tmp_path / "in.npy"), output, model="tests.test_foreign:UNet",
                               model_kwargs=kwargs, weights=str(tmp_path / "w.safetensors"), dims=kwargs["dims"],
                               tile=window, mode="exact", activation="sigmoid" if sigmoid else None, progress=False,
                               levels=1 if run["output"] == "zarr1" else None, device="cpu",
                               tiles_per_block=run.get("block"))
    if any(n <= 2 * c for n, c in zip(run["shape"], contract.crop, strict=True)):
        with pytest.raises(DensePredError, match="is too small for this model"):
            densepred.predict_to_file(job, client=client)
        return
    result = densepred.predict_to_file(job, client=client)
    expected = whole(model, volume.astype(np.float64), contract.factor, result.input_tile,
                     activation=torch.sigmoid if sigmoid else None)
    stored = stored_as(output, expected.shape)
    assert stored.shape == expected.shape, run
    np.testing.assert_allclose(stored, expected, rtol=0, atol=2e-5, err_msg=str(run))


@settings(max_examples=6, **FUZZ)
@given(run=own_runs())
def test_own_net_file_runs_equal_the_window_by_window_definition(tmp_path_factory, run):
    run_own(tmp_path_factory.mktemp("own"), run)


@settings(max_examples=4, **FUZZ)
@given(run=model_runs())
def test_model_file_runs_equal_one_forward_of_the_whole_volume(tmp_path_factory, run):
    run_model(tmp_path_factory.mktemp("model"), run)


@pytest.mark.slow
@settings(max_examples=150, **FUZZ)
@given(run=own_runs())
def test_many_own_net_file_runs_equal_the_definition(tmp_path_factory, run):
    run_own(tmp_path_factory.mktemp("own"), run)


@pytest.mark.slow
@settings(max_examples=100, **FUZZ)
@given(run=model_runs())
def test_many_model_file_runs_equal_the_definition(tmp_path_factory, run):
    run_model(tmp_path_factory.mktemp("model"), run)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def on_a_cluster(run, block):
    """A cluster writes OME-Zarr only."""
    return {**run, "output": "zarr1" if run["output"] == "zarr1" else "zarr", "block": block}


@pytest.mark.slow
@settings(max_examples=40, **FUZZ)
@given(run=own_runs(), block=st.integers(1, 3))
def test_own_net_cluster_runs_equal_the_definition(tmp_path_factory, client, run, block):
    run_own(tmp_path_factory.mktemp("own"), on_a_cluster(run, block), client=client)


@pytest.mark.slow
@settings(max_examples=30, **FUZZ)
@given(run=model_runs(), block=st.integers(1, 3))
def test_model_cluster_runs_equal_the_definition(tmp_path_factory, client, run, block):
    run_model(tmp_path_factory.mktemp("model"), on_a_cluster(run, block), client=client)


# -- found by the campaign ---------------------------------------------------------------------------

def model_cli(tmp_path, kwargs, shape, output, *extra):
    model = trained_looking(UNet(**kwargs), seed=1)
    save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random(shape, dtype=np.float32))
    code = main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", json.dumps(kwargs),
                 "--dims", str(kwargs["dims"]), "--weights", str(tmp_path / "w.safetensors"), "--input",
                 str(tmp_path / "in.npy"), "--output", str(tmp_path / output), "--quiet", *extra])
    return model, code


@pytest.mark.parametrize("output", ["o.zarr", "o.h5:p", "o.npy"])
def test_an_image_smaller_than_a_valid_models_crop_is_one_line_and_creates_nothing(tmp_path, capsys, output):
    """It crashed in zarr, h5py or NumPy on a negative output shape, leaving the output behind."""
    _, code = model_cli(tmp_path, {"dims": 2, "depth": 3, "padding": 0}, (40, 44), output)
    one_error_line(capsys, code, "image spatial shape [40, 44] is too small for this model: it crops [22, 22] "
                                 "output voxels from each side (valid convolutions), so it needs an image of at "
                                 "least [45, 45] voxels")
    assert not (tmp_path / output.split(":")[0]).exists()


def test_an_hdf5_output_smaller_than_one_shard_is_written(tmp_path):
    """A same-padded U-Net over an odd image smaller than one shard: h5py refused chunks larger
    than the dataset ("Chunk shape must not be greater than data shape")."""
    model, code = model_cli(tmp_path, {"dims": 3, "depth": 1, "width": 2}, (13, 22, 11), "o.h5:p")
    assert code == 0
    net = densepred.from_torch(model.float(), dims=3, in_channels=1)
    expected = densepred.predict_dense(net, np.load(tmp_path / "in.npy"), mode="exact")
    np.testing.assert_allclose(open_array(f"{tmp_path}/o.h5:p")[...], expected, rtol=0, atol=1e-6)


def test_a_softmax_over_one_channel_is_refused_naming_sigmoid_and_identity(tmp_path, capsys):
    """The default softmax over a one-channel model (a boundary map, a denoiser) wrote 1.0 everywhere."""
    _, code = model_cli(tmp_path, {"dims": 2, "depth": 1, "classes": 1}, (30, 30), "o.zarr")
    one_error_line(capsys, code, "a softmax over one channel is 1 everywhere: pass --activation sigmoid")
    assert not (tmp_path / "o.zarr").exists()
    _, code = model_cli(tmp_path, {"dims": 2, "depth": 1, "classes": 1}, (30, 30), "o.zarr", "--activation", "sigmoid")
    assert code == 0


@pytest.mark.parametrize(("network", "shape", "axes"), [
    ({"dims": 2, "in_channels": 1, "n_classes": 3, "layers": []}, [30, 26], "CYX"),
    ({"dims": 3, "in_channels": 1, "n_classes": 2, "layers": [{"filters": 2, "kernel": 2}]}, [6, 9, 5], "ZCYX")])
def test_a_tiff_output_is_grey_pages_with_its_axes_never_colour(tmp_path, network, shape, axes):
    """Three classes, or an x extent of 3 or 4 after the crop, were written as RGB (or RGBA)
    samples: Fiji showed one colour image (tifffile warned it would change that). Classes are
    an ImageJ hyperstack's channels (z before them, as ImageJ orders its axes)."""
    run = {"network": network, "shape": shape, "mirror": False, "mode": "dilated", "output": "tif", "depth": None,
           "roi": None, "tile": None, "classes": None, "batch_size": None}
    run_own(tmp_path, run)
    with tifffile.TiffFile(tmp_path / "o.tif") as tiff:
        assert {page.photometric for page in tiff.pages} == {tifffile.PHOTOMETRIC.MINISBLACK}
        assert tiff.series[0].axes == axes


class GlobalPool(torch.nn.Module):
    """A classifier, not a dense model: its output does not grow with the input."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.AdaptiveAvgPool3d(4)

    def forward(self, x):
        return self.pool(self.conv(x))


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("tests.test_foreign:UNet", ["--scale", "0.5"], "check the scale 1/2 given"),
    ("tests.test_differential:GlobalPool", [], "whose output is as large as the input"),
    ("tests.test_foreign:UNet", ["--output-tensor", "1"], "output '1' does not exist: the model returns one tensor")])
def test_a_model_the_probe_cannot_tile_is_refused_after_a_few_forwards(tmp_path, capsys, monkeypatch, model, extra,
                                                                      message):
    """The probe tried every side to 256, each with forwards up to 256^3: a wrong --scale, a
    classifier given as a dense model, or an output the model does not have (every forward
    failed, taken for a size it refuses) ran for minutes to hours before the error."""
    from densepred.networks import contract_sizes

    forwards = []
    accepted = contract_sizes._accepted
    monkeypatch.setattr(contract_sizes, "_accepted", lambda *args: forwards.append(args[3]) or accepted(*args))
    np.save(tmp_path / "in.npy", np.random.default_rng(3).random((13, 30, 27), dtype=np.float32))
    kwargs = ["--model-kwargs", '{"dims": 3, "depth": 1, "width": 2}'] if "UNet" in model else []
    code = main(["predict", "--model", model, *kwargs, "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "o.zarr"), "--quiet", *extra])
    one_error_line(capsys, code, message)
    assert len(forwards) < 60, forwards  # before: hundreds, sides up to 256
    assert max(forwards) <= 160, forwards
