"""2D networks over stacks of 2D images: predicted slice by slice, trained on slices."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import torch

import densepred
from densepred import DensePredError, predict_dense
from densepred.interfaces.cli import main
from densepred.io.synthetic import em_volume
from densepred.networks.weights import save_weights
from densepred.running.compute.sink import Sink
from densepred.running.training import read_history
from tests.conftest import NETS, make_net

TWO_D = """name = "slices"
save_dir = "run"

[network]
dims = 2
in_channels = 1
n_classes = 2
layers = [{ filters = 4, kernel = 3, pool = 2 }, { filters = 5, kernel = 3 }]
"""


def per_slice(net, stack, **kwargs):
    """The definition: predict_dense on every slice on its own, stacked along z."""
    if stack.ndim == 4:  # (C, Z, Y, X)
        return np.stack([predict_dense(net, stack[:, z], **kwargs) for z in range(stack.shape[1])], axis=1)
    return np.stack([predict_dense(net, stack[z], **kwargs) for z in range(stack.shape[0])], axis=1)


@pytest.mark.parametrize(("mode", "tile", "mirror"), [
    ("mfp", (3, 19, 19), False), ("dilated", (2, 17, 23), True), ("mfp", (23, 19), True), ("naive", None, False)])
def test_a_2d_net_over_a_stack_equals_slice_by_slice(rng, mode, tile, mirror):
    net = make_net(NETS["2d_pool2"], dtype=torch.float32)
    stack = rng.random((7, 41, 37), dtype=np.float32)
    expected = per_slice(net, stack, mode=mode if mode != "naive" else "dilated", mirror=mirror)
    got = predict_dense(net, stack, mode=mode, tile_shape=tile, mirror=mirror)
    assert got.shape == (3, 7, *expected.shape[2:])
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_a_multichannel_stack_and_the_shapes_that_are_images(rng):
    net = make_net(NETS["2d_pool3_mixed"], dtype=torch.float32)  # two channels
    stack = rng.random((2, 4, 30, 31), dtype=np.float32)
    np.testing.assert_allclose(predict_dense(net, stack), per_slice(net, stack), atol=2e-5)
    assert predict_dense(net, stack[:, 0]).ndim == 3  # (C, Y, X): one image
    one = make_net(NETS["2d_pool2"], dtype=torch.float32)
    assert predict_dense(one, rng.random((1, 30, 30))).ndim == 3  # (1, Y, X): one image
    assert predict_dense(one, rng.random((1, 1, 30, 30))).ndim == 4  # a stack of one slice
    with pytest.raises(DensePredError, match=r"a stack of such images: \(2, Z, Y, X\)"):
        predict_dense(net, rng.random((3, 30, 31)))


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "slices.toml"
    path.write_text(TWO_D)
    torch.manual_seed(0)
    net = densepred.build_net(densepred.load_config(path))
    with torch.no_grad():
        net.blocks[-1].transform.weight.mul_(30.0)
    save_weights(net, tmp_path / "run" / "slices-LAST.safetensors")
    return path


def test_densepred_predict_over_a_tiff_stack_equals_slice_by_slice_with_roi_and_resume(config, tmp_path,
                                                                                       monkeypatch):
    stack = np.random.default_rng(2).integers(0, 255, size=(9, 53, 47), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    net = densepred.create_prediction_net(config)
    expected = per_slice(net, stack, mirror=True)
    args = ["predict", str(config), "--input", str(tmp_path / "stack.tif"), "--mirror", "--tile", "13,13",
            "--quiet"]
    assert main([*args, "--output", str(tmp_path / "out.zarr")]) == 0
    stored = densepred.io.open_array(str(tmp_path / "out.zarr"))[...]
    np.testing.assert_allclose(stored, expected, atol=2e-5)
    assert main([*args, "--output", str(tmp_path / "roi.npy"), "--roi", "2:5,10:40,3:30"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "roi.npy"), expected[:, 2:5, 10:40, 3:30], atol=2e-5)
    original, calls = Sink.write, {"n": 0}

    def failing(self, box, values):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(5, "Input/output error")
        return original(self, box, values)

    monkeypatch.setattr(Sink, "write", failing)
    assert main([*args, "--output", str(tmp_path / "cut.h5:p")]) == 2
    monkeypatch.undo()
    assert main([*args, "--output", str(tmp_path / "cut.h5:p"), "--resume"]) == 0
    with h5py.File(tmp_path / "cut.h5") as f:
        np.testing.assert_array_equal(f["p"][...], stored)


def test_a_2d_net_trains_on_a_z_stack(tmp_path):
    raw, label = em_volume((12, 96, 96), seed=3, cell_size=24)
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["raw"], f["label"] = raw, label
    (tmp_path / "net.toml").write_text(TWO_D + """
[training]
data = [{ raw = "stack.h5:raw", label = "stack.h5:label" }]
patch_size = 24
batch_size = 6
steps = 60
lr = 0.01
validate_every = 20
save_every = 20
""")
    result = densepred.train(tmp_path / "net.toml", progress=False)
    history = read_history(tmp_path / "run" / "history.csv")
    assert result.step == 60
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] is not None  # validation held out of the stack
