"""Models whose output is at another scale than their input (half its size, upsampled 4x): the
scale probed or given, windows placed in output voxels, every exact tiling equal to one forward
of the whole padded image; bioimage.io packages of such models pass the zoo's own test; files
carry the output's voxel size and the position of its voxel 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr

import densepred
from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.networks.loading import load_model
from densepred.running.planning.model_window import smallest_exact
from tests.test_foreign_files import stored

SOURCE = '''import torch
from torch import nn


def _nd(name, dims):
    return getattr(nn, f"{name}{dims}d")


class Half(nn.Module):
    """Two 2x poolings and one 2x upsampling: the output is half the input's size."""

    def __init__(self, dims=2, classes=2):
        super().__init__()
        conv, pool = _nd("Conv", dims), _nd("MaxPool", dims)
        self.body = nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), pool(2), conv(4, 4, 3, padding=1), nn.ReLU(),
                                  pool(2), nn.Upsample(scale_factor=2), conv(4, classes, 3, padding=1))

    def forward(self, x):
        return self.body(x)


class Up(nn.Module):
    """A 4x transposed convolution between two convolutions: the output is 4x the input's size."""

    def __init__(self, dims=2):
        super().__init__()
        conv, up = _nd("Conv", dims), _nd("ConvTranspose", dims)
        self.body = nn.Sequential(conv(1, 3, 3, padding=1), nn.ReLU(), up(3, 3, 4, stride=4), conv(3, 1, 3, padding=1))

    def forward(self, x):
        return self.body(x)
'''

SCALES = {"Half": 0.5, "Up": 4}


def scaled_model(folder, name, dims=2, seed=0):
    folder.mkdir(exist_ok=True)
    (folder / "scaled.py").write_text(SOURCE)
    torch.manual_seed(seed)
    return load_model(f"{folder / 'scaled.py'}:{name}", {"dims": dims}).eval()


def whole_forward(model, image, scale, multiple):
    """The definition: one forward of the image zero-padded at its high end to a multiple of
    ``multiple``, cut to the output voxels that cover the image (rounded up)."""
    padded = np.zeros([math.ceil(n / multiple) * multiple for n in image.shape], np.float32)
    padded[tuple(slice(0, n) for n in image.shape)] = image
    with torch.no_grad():
        out = model(torch.from_numpy(padded)[None, None])[0].numpy()
    return out[(slice(None), *(slice(0, math.ceil(n * scale)) for n in image.shape))]


@pytest.mark.parametrize(("name", "dims", "shape"), [("Half", 2, (77, 93)), ("Up", 2, (29, 38)),
                                                     ("Half", 3, (21, 30, 27))])
def test_a_scaled_output_is_probed_and_tiled_exactly(tmp_path, name, dims, shape):
    model = scaled_model(tmp_path, name, dims)
    image = np.random.default_rng(dims).random(shape, dtype=np.float32)
    net = densepred.from_torch(model, dims=dims, in_channels=1, output="identity")
    scale = SCALES[name]
    assert net.contract.exact, net.contract.reason
    assert [float(up / down) for up, down in net.contract.scale] == [scale] * dims
    assert all(f % 2 == 0 for f in net.contract.factor) if name == "Half" else True
    expected = whole_forward(model, image, scale, max(net.contract.factor))
    small = smallest_exact(net.contract)
    for window in (None, small, tuple(w + f for w, f in zip(small, net.contract.factor, strict=True))):
        got = densepred.predict_dense(net, image, mode="exact", tile_shape=window)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    blended = densepred.predict_dense(net, image, mode="blend", tile_shape=small)
    assert blended.shape == expected.shape
    assert np.isfinite(blended).all()
    origin = densepred.running.output_origin(net, image)
    assert origin == ((0.5,) * dims if name == "Half" else (-0.375,) * dims)  # voxel centres at the output's scale


def test_a_given_scale_skips_the_probe_of_it_and_a_wrong_or_invalid_one_is_refused(tmp_path):
    model = scaled_model(tmp_path, "Half")
    probed = densepred.from_torch(model, dims=2, in_channels=1, output="identity").contract
    for given in (0.5, "1/2", (1, 2), ["0.5", "1/2"]):
        assert densepred.from_torch(model, dims=2, in_channels=1, scale=given).contract == probed
    with pytest.raises(DensePredError, match=r"whose output is 1/4 times the input.*check the scale 1/4 given"):
        densepred.from_torch(model, dims=2, in_channels=1, scale=0.25)
    for wrong in ("half", 0, -2, 1e-9, (1, 2, 3)):
        with pytest.raises(DensePredError, match=r"scale .* (is invalid|has 3 values)"):
            densepred.from_torch(model, dims=2, in_channels=1, scale=wrong)


HALF_V05 = """format_version: 0.5.4
type: model
name: half-size test net
description: a 2D net whose output is half its input's size
authors: [{name: densepred tests}]
cite: [{text: densepred, url: "https://github.com/"}]
license: MIT
documentation: README.md
inputs:
  - id: raw
    axes:
      - type: batch
      - {type: channel, channel_names: [raw]}
      - {type: space, id: y, size: {min: 8, step: 4}}
      - {type: space, id: x, size: {min: 8, step: 4}}
    test_tensor: {source: test_input.npy}
outputs:
  - id: out
    axes:
      - type: batch
      - {type: channel, channel_names: [c0, c1]}
      - {type: space, id: y, scale: 2.0, size: {tensor_id: raw, axis_id: y}}
      - {type: space, id: x, scale: 2.0, size: {tensor_id: raw, axis_id: x}}
    test_tensor: {source: out.npy}
weights:
  pytorch_state_dict:
    source: weights.pt
    pytorch_version: '2.13'
    architecture: {source: scaled.py, callable: Half, kwargs: {dims: 2}}
"""

UP_V04 = """format_version: 0.4.10
type: model
name: upsampling test net
description: a 2D net whose output is 4x its input's size
authors: [{name: densepred tests}]
cite: [{text: densepred, url: "https://github.com/"}]
license: MIT
documentation: README.md
timestamp: 2024-01-01T00:00:00
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    data_range: [-.inf, .inf]
    shape: {min: [1, 1, 4, 4], step: [0, 0, 1, 1]}
outputs:
  - name: out
    axes: bcyx
    data_type: float32
    data_range: [-.inf, .inf]
    shape: {reference_tensor: raw, scale: [1, 1, 4.0, 4.0], offset: [0, 0, 0, 0]}
test_inputs: [test_input.npy]
test_outputs: [out.npy]
weights:
  torchscript:
    source: model.torchscript
    pytorch_version: '2.13'
"""


def scaled_package(folder, name, text, shape):
    """A package of the ``name`` model described by ``text``; its test output from one forward."""
    model = scaled_model(folder, name)
    (folder / "README.md").write_text(f"# {name}\n")
    x = np.random.default_rng(4).random(shape, dtype=np.float32)
    np.save(folder / "test_input.npy", x)
    with torch.no_grad():
        np.save(folder / "out.npy", model(torch.from_numpy(x)).numpy())
    torch.save(model.state_dict(), folder / "weights.pt")
    torch.jit.trace(model, torch.rand(1, 1, 8, 8)).save(str(folder / "model.torchscript"))
    (folder / "rdf.yaml").write_text(text)
    return folder / "rdf.yaml", model


@pytest.mark.parametrize(("name", "text", "weights"), [("Half", HALF_V05, "pytorch_state_dict"),
                                                       ("Up", UP_V04, "torchscript")])
def test_scaled_packages_pass_the_zoos_test_and_predict_to_files_at_their_scale(tmp_path, capsys, name, text,
                                                                               weights):
    pytest.importorskip("bioimageio.spec")
    rdf, model = scaled_package(tmp_path / "p", name, text, (1, 1, 48, 40) if name == "Half" else (1, 1, 20, 24))
    code = main(["test-model", str(rdf)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"pass  {weights}, output out, whole" in out
    assert f"pass  {weights}, output out, tiled" in out
    image = np.random.default_rng(5).random((45, 62) if name == "Half" else (23, 17), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "o.zarr"), "--voxel-size", "3,2", "--quiet"]) == 0
    scale = SCALES[name]
    expected = whole_forward(model, image, scale, 4 if name == "Half" else 1)  # its factor: 4, or 1
    np.testing.assert_allclose(stored(tmp_path / "o.zarr"), expected, rtol=0, atol=2e-6)
    transforms = zarr.open_group(tmp_path / "o.zarr", mode="r").attrs["ome"]["multiscales"][0]["datasets"][0][
        "coordinateTransformations"]
    assert transforms[0]["scale"][1:] == [3 / scale, 2 / scale]  # the output's voxels, in the input's units
    origin = 0.5 if name == "Half" else -0.375
    assert transforms[1]["translation"][1:] == [3 * origin, 2 * origin]


PICKY_HALF = '''from torch import nn


class PickyHalf(nn.Module):
    """Accepts only sides of 288 + 32k (sizes the probe does not try) and halves them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        if min(x.shape[2:]) < 288 or any((s - 288) % 32 for s in x.shape[2:]):
            raise ValueError("sizes of 288 + 32k only")
        return self.pool(self.conv(x))
'''


def test_the_scale_factor_and_sizes_can_be_given_on_the_command_line(tmp_path, capsys):
    (tmp_path / "picky.py").write_text(PICKY_HALF)
    model = load_model(f"{tmp_path / 'picky.py'}:PickyHalf")
    torch.save(model.state_dict(), tmp_path / "picky.pt")
    image = np.random.default_rng(9).random((301, 290), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    base = ["predict", "--model", f"{tmp_path / 'picky.py'}:PickyHalf", "--weights", str(tmp_path / "picky.pt"),
            "--dims", "2", "--input", str(tmp_path / "in.npy"), "--activation", "identity", "--quiet",
            "--factor", "32", "--smallest", "288", "--context", "1", "--mode", "exact"]
    assert main([*base, "--output", str(tmp_path / "a.zarr")]) == 2  # at scale 1 its output is half
    assert "so its output scale is 1/2,1/2, not 1x1: give --scale 1/2,1/2" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "b.zarr"), "--scale", "1/2"]) == 0
    np.testing.assert_allclose(stored(tmp_path / "b.zarr"), whole_forward(model, image, 0.5, 32),
                               rtol=0, atol=2e-6)
    assert main([*base, "--output", str(tmp_path / "c.zarr"), "--scale", "half"]) == 2
    assert "--scale 'half' is invalid" in capsys.readouterr().err


@pytest.mark.slow  # 7 s each; scaled outputs in one process: the tests above
@pytest.mark.parametrize("name", ["Half", "Up"])
def test_a_scaled_output_on_a_local_cluster_equals_the_one_process_run(tmp_path, name):
    model = scaled_model(tmp_path, name, dims=3)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    shape, tile = ((29, 45, 37), (20, 24, 24)) if name == "Half" else ((13, 22, 19), (6, 8, 8))
    np.save(tmp_path / "in.npy", np.random.default_rng(11).random(shape, dtype=np.float32))

    def job(output, **options):
        return densepred.PredictJob(None, str(tmp_path / "in.npy"), str(tmp_path / output),
                                    model=f"{tmp_path / 'scaled.py'}:{name}", model_kwargs={"dims": 3},
                                    weights=str(tmp_path / "w.pt"), activation="identity", progress=False,
                                    mode="exact", tile=tile, levels=2, **options)

    densepred.predict_to_file(job("one.zarr"))
    one = stored(tmp_path / "one.zarr")
    expected = whole_forward(model, np.load(tmp_path / "in.npy"), SCALES[name], 4 if name == "Half" else 1)
    np.testing.assert_allclose(one, expected, rtol=0, atol=2e-6)
    result = densepred.predict_to_file(job("two.zarr", workers=2, threads_per_worker=1, tiles_per_block=1))
    assert result.tiles > 2
    np.testing.assert_allclose(stored(tmp_path / "two.zarr"), one, rtol=0, atol=1e-6)
