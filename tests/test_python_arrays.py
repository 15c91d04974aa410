"""The arrays a Python caller has in hand, as ``predict_dense``'s image and as its ``out``.

Any container (NumPy in any layout and byte order, a memmap, a torch tensor on the host with or
without a gradient, in bfloat16, a dask, zarr or h5py array, nested lists) and any real dtype
gives the window-by-window definition of the values it holds; an ``out`` of any kind takes the
result as its dtype keeps it (uint8 as ``--dtype uint8`` stores it), or is refused in one line
before a tile is computed.
"""

from __future__ import annotations

import json
import logging
import re

import h5py
import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import densepred
from densepred.errors import DensePredError
from densepred.io import to_float32
from tests.conftest import NETS, make_net, reference_logits, softmax

SHAPE = (3, 23, 29)  # a stack of three 2D sections, odd sizes
NET = make_net(NETS["2d_pool2"], seed=7, dtype=torch.float32)
DEFINITION = make_net(NETS["2d_pool2"], seed=7)  # the same parameters in float64
DTYPES = ["uint8", "uint16", "int16", "float16", "float32", "float64", "bool", ">f4", ">u2"]
GOOD_OUTS = ["none", "float32", "float64", "float16", "uint8", "fortran", "memmap", "tensor", "tensor-float64",
             "tensor-bfloat16", "tensor-uint8", "zarr", "hdf5"]
BAD_OUTS = ["int16", "bool", "read-only", "read-only-memmap", "zarr-read-only", "hdf5-read-only", "dask",
            "tensor-int32", "list", "wrong-shape"]


def _values(dtype: str, rng: np.random.Generator) -> np.ndarray:
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return rng.standard_normal(SHAPE).astype(kind)
    if kind.kind == "b":
        return rng.random(SHAPE) > 0.5
    info = np.iinfo(kind)
    return rng.integers(info.min, int(info.max) + 1, SHAPE).astype(kind)


def _read_only(values: np.ndarray) -> np.ndarray:
    view = values.copy()
    view.setflags(write=False)
    return view


def _strided(values: np.ndarray) -> np.ndarray:
    big = np.zeros((SHAPE[0], 2 * SHAPE[1], 3 * SHAPE[2]), values.dtype)
    big[:, ::2, ::3] = values
    return big[:, ::2, ::3]


def _memmap(values: np.ndarray, folder) -> np.ndarray:
    np.save(folder / "in.npy", values)
    return np.load(folder / "in.npy", mmap_mode="r")


def _zarr(values: np.ndarray, folder) -> object:
    array = zarr.create_array(store={}, shape=SHAPE, chunks=(2, 8, 16), dtype=values.dtype)
    array[...] = values
    return array


def _hdf5(values: np.ndarray, folder) -> object:
    with h5py.File(folder / "in.h5", "w") as file:
        file.create_dataset("raw", data=values, chunks=(1, 8, 16))
    return h5py.File(folder / "in.h5", "r")["raw"]


def _dask(values: np.ndarray, folder) -> object:
    import dask.array as da
    return da.from_array(values, chunks=(2, 10, 13))


CONTAINERS = {  # values -> the same values in another container
    "numpy": lambda v, folder: v,
    "fortran": lambda v, folder: np.asfortranarray(v),
    "reversed": lambda v, folder: np.ascontiguousarray(v[::-1, :, ::-1])[::-1, :, ::-1],
    "strided": lambda v, folder: _strided(v),
    "read-only": lambda v, folder: _read_only(v),
    "memmap": _memmap, "zarr": _zarr, "hdf5": _hdf5, "dask": _dask,
    "list": lambda v, folder: v.tolist(),
}
TENSORS = {  # NumPy-native values -> a tensor holding them
    "tensor": torch.from_numpy,
    "tensor-permuted": lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))).permute(1, 2, 0),
    "tensor-grad": lambda v: torch.from_numpy(v).clone().requires_grad_(v.dtype.kind == "f"),
}
INPUTS = [*CONTAINERS, *TENSORS, "tensor-bfloat16"]


def _container(values: np.ndarray, kind: str, folder) -> tuple[object, np.ndarray]:
    """``values`` in the container ``kind``, and the values it holds as NumPy sees them."""
    if kind in CONTAINERS:
        return CONTAINERS[kind](values, folder), np.asarray(values.tolist()) if kind == "list" else values
    plain = values.astype(values.dtype.newbyteorder("="))
    if kind == "tensor-bfloat16":  # of the values the net sees: bfloat16 holds floats
        rounded = torch.from_numpy(to_float32(plain)).bfloat16()
        return rounded, rounded.float().numpy()
    return TENSORS[kind](plain), plain


OUT_DTYPES = {"float32": "f4", "float64": "f8", "float16": "f2", "uint8": "u1", "int16": "i2", "bool": "?",
              "fortran": "f4", "read-only": "f4", "wrong-shape": "f4"}
OUT_TENSORS = {"tensor": torch.float32, "tensor-float64": torch.float64, "tensor-bfloat16": torch.bfloat16,
               "tensor-uint8": torch.uint8, "tensor-int32": torch.int32}


def _numpy_out(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.zeros(shape if kind != "wrong-shape" else (*shape[:-1], shape[-1] + 1), OUT_DTYPES[kind],
                     order="F" if kind == "fortran" else "C")
    array.setflags(write=kind != "read-only")
    return array


def _file_out(kind: str, shape: tuple[int, ...], folder) -> object:
    read_only = kind.startswith("read-only") or kind.endswith("read-only")
    if "memmap" in kind:
        np.save(folder / "out.npy", np.zeros(shape, np.float32))
        return np.load(folder / "out.npy", mmap_mode="r" if read_only else "r+")
    if kind.startswith("zarr"):
        array = zarr.create_array(store=str(folder / "out.zarr"), shape=shape, chunks=(1, 2, 8, 8), dtype="f4",
                                  overwrite=True)
        return zarr.open_array(str(folder / "out.zarr"), mode="r") if read_only else array
    with h5py.File(folder / "out.h5", "w") as file:
        file.create_dataset("p", shape, "f4", chunks=(1, 1, 8, 8))
    return h5py.File(folder / "out.h5", "r" if read_only else "r+")["p"]


def _out(kind: str, shape: tuple[int, ...], folder) -> object:
    if kind in OUT_DTYPES:
        return _numpy_out(kind, shape)
    if kind in OUT_TENSORS:
        return torch.zeros(shape, dtype=OUT_TENSORS[kind])
    if kind == "dask":
        import dask.array as da
        return da.zeros(shape, chunks=shape, dtype=np.float32)
    if kind == "list":
        return [[0.0]]
    return None if kind == "none" else _file_out(kind, shape, folder)


def _stored(out: object) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.float().numpy()
    return np.asarray(out[...], dtype=np.float64)


def _definition(held: np.ndarray) -> np.ndarray:
    """The stack's probabilities, section by section, window by window, in float64."""
    sections = [softmax(reference_logits(DEFINITION, to_float32(section)[None], mirror=True)) for section in held]
    return np.stack(sections, axis=1)


def _tolerance(in_kind: str, out_kind: str) -> float:
    if out_kind in ("uint8", "tensor-uint8"):
        return 1.0  # a probability at a rounding edge may round either way by float32 noise
    if out_kind in ("float16", "tensor-bfloat16"):
        return 4e-3
    return 2e-5


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), in_kind=st.sampled_from(INPUTS), out_kind=st.sampled_from(GOOD_OUTS),
       mode=st.sampled_from(["mfp", "dilated"]), seed=st.integers(0, 2**16))
@example(dtype="float32", in_kind="tensor", out_kind="tensor", mode="mfp", seed=0)
@example(dtype="float64", in_kind="tensor-grad", out_kind="none", mode="mfp", seed=1)
@example(dtype="float32", in_kind="tensor-bfloat16", out_kind="uint8", mode="dilated", seed=2)
@example(dtype="uint8", in_kind="tensor", out_kind="zarr", mode="mfp", seed=3)
def test_any_container_and_out_give_the_definition_of_the_values_held(dtype, in_kind, out_kind, mode, seed,
                                                                      tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    image, held = _container(_values(dtype, np.random.default_rng(seed)), in_kind, folder)
    expected = _definition(held)
    out = _out(out_kind, expected.shape, folder)
    got = densepred.predict_dense(NET, image, mirror=True, mode=mode, tile_shape=(2, 27, 27), out=out)
    if out is not None:
        assert got is out
    if out_kind in ("uint8", "tensor-uint8"):
        expected = np.rint(expected * 255)
    np.testing.assert_allclose(_stored(got), expected, rtol=0, atol=_tolerance(in_kind, out_kind))


@pytest.mark.parametrize("out_kind", BAD_OUTS)
def test_an_out_that_cannot_take_the_result_is_refused_in_one_line_before_any_tile(out_kind, tmp_path):
    image = np.random.default_rng(4).random(SHAPE, dtype=np.float32)
    out = _out(out_kind, (3, *SHAPE), tmp_path)
    calls = []
    with pytest.raises(DensePredError) as caught:
        densepred.predict_dense(NET, image, mirror=True, out=out, progress=calls.append)
    assert "\n" not in str(caught.value)
    assert calls == [], "refused after work began"
    if isinstance(out, np.ndarray) and out.flags.writeable:
        assert not out.any()


def test_a_model_takes_a_tensor_and_writes_into_a_tensor_or_a_uint8_array_or_refuses_before_its_probes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 3, padding=1)).eval()
    net = densepred.from_torch(model, dims=2, in_channels=1)
    image = np.random.default_rng(6).random((37, 41), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    got = densepred.predict_dense(net, torch.from_numpy(image).requires_grad_(True), mode="exact",
                                  out=torch.zeros(expected.shape, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    encoded = densepred.predict_dense(net, image, mode="exact", out=np.zeros(expected.shape, np.uint8))
    assert np.abs(encoded.astype(np.float64) - expected * 255).max() <= 0.5 + 1e-3
    read_only = np.zeros(expected.shape, np.float32)
    read_only.setflags(write=False)
    with pytest.raises(DensePredError, match="read-only"):
        densepred.predict_dense(net, image, mode="exact", out=read_only)
    zarr_out = zarr.create_array(tmp_path / "o.zarr", shape=expected.shape, chunks=(2, 16, 16), dtype="float64")
    assert densepred.predict_dense(net, image, mode="exact", tile_shape=(16, 16), out=zarr_out) is zarr_out
    np.testing.assert_allclose(zarr_out[:], expected, rtol=0, atol=1e-5)  # window after window, chunks shared
    with pytest.raises(DensePredError, match="file to file"):  # blending into out= is refused
        densepred.predict_dense(net, image, mode="blend", tile_shape=(16, 16), out=zarr_out)


@pytest.mark.parametrize("make", [lambda: torch.zeros((3, *SHAPE), dtype=torch.complex64),
                                  lambda: np.zeros(SHAPE, object), lambda: [[[0.5] * 29] * 23, [[0.5] * 28] * 23]],
                         ids=["complex tensor", "object array", "ragged lists"])
def test_an_image_numpy_cannot_read_as_numbers_is_one_line(make):
    with pytest.raises(DensePredError) as caught:
        densepred.predict_dense(NET, make(), mirror=True)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("features", "message"), [
    ([["a", "b", "c"]], "input dtype <U1 is invalid; expected real numbers"),
    (np.zeros((5, 3), complex), "input dtype complex128 is invalid"),  # its imaginary part was dropped
    ([[1, 2], [3]], "input is not an array of numbers"),
])
def test_class_probabilities_of_what_is_no_array_of_real_numbers_is_one_line(features, message):
    net = densepred.build_net(densepred.config_from_dict(
        {"network": {"dims": 0, "in_channels": 3, "n_classes": 2, "mlp": [4]}}))
    with pytest.raises(DensePredError, match=re.escape(message)):
        densepred.class_probabilities(net, features)


def test_class_probabilities_take_a_tensor_with_a_gradient():
    patches = torch.rand((5, 1, *NET.geometry.fov), requires_grad=True)
    got = densepred.class_probabilities(NET, patches)
    expected = [softmax(reference_logits(DEFINITION, patch)).ravel() for patch in patches.detach().numpy()]
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_options_of_the_other_kind_of_net_are_refused_not_ignored(tmp_path):
    image = np.random.default_rng(8).random(SHAPE, dtype=np.float32)
    model = densepred.from_torch(torch.nn.Conv2d(1, 2, 3, padding=1), dims=2, in_channels=1)
    np.save(tmp_path / "in.npy", image)
    for call in (lambda: densepred.predict_dense(NET, image, tta="flips"),
                 lambda: densepred.predict_dense(NET, image, overlap=0.25),
                 lambda: densepred.predict_dense(NET, image, channel_map={0: [1, 0, 2]}),
                 lambda: densepred.predict_dense(model, image, batch_size=4),
                 lambda: densepred.predict_to_file(densepred.PredictJob(
                     model="torch.nn:Identity", input=str(tmp_path / "in.npy"), output=str(tmp_path / "o.zarr"),
                     config=None, dims=2, mirror=True))):
        with pytest.raises(DensePredError, match=r"own nets|models from"):
            call()
    with pytest.raises(DensePredError, match="contract 'x' is invalid; expected a dict"):
        densepred.predict_to_file(densepred.PredictJob(None, str(tmp_path / "in.npy"), str(tmp_path / "o.zarr"),
                                                       model="torch.nn:Identity", dims=2, contract="x"))
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tile_shape": float("nan")}, "tile_shape nan is invalid; expected a positive integer, or one per axis"),
    ({"tile_shape": (True, 27, 27)}, "is invalid"),
    ({"progress": 3}, "progress = 3 is invalid"),
    ({"memory_limit": "8G"}, "memory_limit = '8G' is invalid; expected a number of bytes"),
    ({"batch_size": 10**9}, "or give a smaller --batch-size"),
])
def test_a_wrong_value_of_predict_dense_is_one_line(kwargs, message):
    with pytest.raises(DensePredError, match=re.escape(message)):
        densepred.predict_dense(NET, np.random.default_rng(9).random(SHAPE, dtype=np.float32), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tta": [0, 0]}, "tta [0, 0] is invalid; expected 'flips' or a list of distinct spatial axes in 0..1"),
    ({"tta": 3}, "tta 3 is invalid"),
    ({"overlap": "0.5", "mode": "blend"}, "overlap '0.5' is invalid"),
    ({"channel_map": {0: [1, 1]}, "tta": [0]}, "channel_map[0] = [1, 1] is invalid: this model returns 2 channels"),
    ({"channel_map": "x", "tta": [0]}, "channel_map 'x' is invalid"),
    ({"tile_shape": float("nan")}, "window nan is invalid"),
])
def test_a_wrong_value_for_a_models_windows_is_one_line(kwargs, message):
    model = densepred.from_torch(torch.nn.Conv2d(1, 2, 3, padding=1), dims=2, in_channels=1)
    with pytest.raises(DensePredError, match=re.escape(message)):
        densepred.predict_dense(model, np.random.default_rng(9).random(SHAPE, dtype=np.float32), **kwargs)


def test_numbers_from_numpy_are_taken_by_from_torch_and_a_predict_job(tmp_path):
    model = densepred.from_torch(torch.nn.Conv2d(1, 2, 3, padding=1), dims=np.int64(2), in_channels=np.int32(1))
    assert (model.dims, model.in_channels) == (2, 1)
    assert type(model.in_channels) is int
    image = np.random.default_rng(15).random((40, 44), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    config = make_config_2d(tmp_path)
    job = densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / "o.zarr"), progress=False,
                               mirror=True, batch_size=np.int64(2), levels=np.int64(1))
    assert densepred.predict_to_file(job).shape[1:] == image.shape
    record = json.loads((tmp_path / "o.zarr.densepred" / "run.json").read_text())
    assert record["complete"]
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as local, \
            Client(local) as client:  # tiles per cluster task from NumPy too
        densepred.predict_to_file(densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / "c.zarr"),
                                                       progress=False, mirror=True, levels=np.int64(1),
                                                       tiles_per_block=np.int64(2)), client=client)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "c.zarr", mode="r")["0"][...],
                                  zarr.open_group(tmp_path / "o.zarr", mode="r")["0"][...])
    with pytest.raises(DensePredError, match=re.escape("levels = 0 is invalid; expected a positive integer (1 = no")):
        densepred.predict_to_file(densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / "p.zarr"),
                                                       levels=0))


def make_config_2d(folder):
    """A small 2D net's config file, with its weights beside it."""
    from densepred.networks.weights import save_weights

    path = folder / "net.toml"
    path.write_text('name = "net"\nsave_dir = "run"\n[network]\ndims = 2\nin_channels = 1\nn_classes = 3\n'
                    "layers = [{ filters = 4, kernel = 3, pool = 2 }, { filters = 4, kernel = 3 }]\n")
    save_weights(densepred.build_net(densepred.load_config(path)), folder / "run" / "net-LAST.safetensors")
    return path


def test_numbers_from_numpy_and_floats_are_taken_where_a_count_of_bytes_or_voxels_is_due():
    image = np.random.default_rng(10).random(SHAPE, dtype=np.float32)
    expected = densepred.predict_dense(NET, image, mirror=True)
    for kwargs in ({"memory_limit": np.int64(2**31)}, {"memory_limit": 8e9}, {"tile_shape": np.array([2, 27, 27])},
                   {"tile_shape": np.int64(27)}):
        np.testing.assert_allclose(densepred.predict_dense(NET, image, mirror=True, **kwargs), expected, rtol=0,
                                   atol=1e-6)  # another tile sums in another order
    model = densepred.from_torch(torch.nn.Conv2d(1, 2, 3, padding=1), dims=2, in_channels=1)
    whole_ = densepred.predict_dense(model, image, mode="exact")
    np.testing.assert_allclose(densepred.predict_dense(model, image, mode="exact", tile_shape=np.int64(16)), whole_,
                               rtol=0, atol=1e-6)


class TwoOutputs(torch.nn.Module):
    """A deep-supervision-like model: logits and a second head, as a dict or a tuple."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.conv, self.as_dict = torch.nn.Conv2d(1, 2, 3, padding=1), as_dict

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        return {"logits": y, "aux": y[:, :1]} if self.as_dict else (y, y[:, :1])


@pytest.mark.parametrize("as_dict", [True, False])
def test_a_model_with_several_outputs_is_told_to_name_one_and_predicts_the_one_named(as_dict):
    torch.manual_seed(1)
    model = TwoOutputs(as_dict)
    with pytest.raises(DensePredError) as caught:
        densepred.from_torch(model, dims=2, in_channels=1)
    assert "returns a dict of 2 outputs ('logits', 'aux')" in str(caught.value) if as_dict else \
        "returns a tuple of 2 outputs" in str(caught.value)
    assert "output_tensor=" in str(caught.value)
    net = densepred.from_torch(model, dims=2, in_channels=1, output_tensor="logits" if as_dict else 0)
    image = np.random.default_rng(11).random((37, 41), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(model.conv(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    got = densepred.predict_dense(net, image, mode="exact", tile_shape=(16, 16))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_bfloat16_model_is_probed_and_predicts():
    torch.manual_seed(2)
    model = torch.nn.Conv2d(1, 2, 3, padding=1).bfloat16()
    net = densepred.from_torch(model, dims=2, in_channels=1)  # its weights hashed as bytes (NumPy has no bfloat16)
    image = np.random.default_rng(12).random((37, 41), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(image)[None, None].bfloat16()).float(), 1)[0].numpy()
    got = densepred.predict_dense(net, image, mode="exact", tile_shape=(16, 16))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mirror", [True, False])
def test_nan_in_an_image_in_memory_is_warned_about_naming_the_first_voxel_it_reaches(mirror, caplog):
    image = np.random.default_rng(13).random(SHAPE, dtype=np.float32)
    image[1, 5, 5] = np.nan
    with caplog.at_level(logging.WARNING, logger="densepred"):
        got = densepred.predict_dense(NET, image, mirror=mirror)
    bad = np.argwhere(np.isnan(got).any(axis=0))
    first = bad[0] + (0 if mirror else np.array([0, *NET.geometry.offset]))  # as image voxels
    assert f"{len(bad)} output voxel(s) have no finite prediction" in caplog.text
    assert f"the first at image voxel {','.join(map(str, first))}" in caplog.text


def test_class_probabilities_of_features_with_nan_are_warned_about(caplog):
    net = densepred.build_net(densepred.config_from_dict(
        {"network": {"dims": 0, "in_channels": 3, "n_classes": 2, "mlp": [4]}}))
    features = np.random.default_rng(14).random((6, 3))
    features[4, 1] = np.nan
    with caplog.at_level(logging.WARNING, logger="densepred"):
        got = densepred.class_probabilities(net, features)
    assert np.isnan(got[4]).all()
    assert np.isfinite(np.delete(got, 4, axis=0)).all()
    assert "1 of 6 inputs have no finite probabilities because they hold NaN or inf (the first: 4)" in caplog.text
