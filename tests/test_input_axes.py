"""Inputs whose files name their axes: bioformats2raw's (t, c, z, y, x) OME-Zarr, Fiji's ZCYX
stacks, colour TIFFs (YXS). Each is predicted as the same data given channels first."""

from __future__ import annotations

import doctest
import json

import h5py
import numpy as np
import pytest
import tifffile
import tomlkit
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import densepred
import densepred.io.axes
from densepred.interfaces.cli import main
from densepred.io.axes import channel_first
from densepred.networks.weights import save_weights
from tests.conftest import make_net
from tests.test_reliability_files import one_error_line


def net_config(tmp_path, dims, channels):
    network = {"dims": dims, "in_channels": channels, "n_classes": 2, "layers": [{"filters": 3, "kernel": 3}]}
    net = make_net(network, seed=channels, dtype=torch.float32)
    (tmp_path / "n.toml").write_text(tomlkit.dumps({"name": "n", "save_dir": str(tmp_path), "network": network}))
    save_weights(net, tmp_path / "n-LAST.safetensors")
    return tmp_path / "n.toml", net


def predicted(config, spec, tmp_path, *extra):
    assert main(["predict", str(config), "--input", spec, "--output", str(tmp_path / "o.npy"), "--quiet",
                 "--overwrite", *extra]) == 0
    return np.load(tmp_path / "o.npy")


def ome_image(path, data, axes, version):
    """An OME-Zarr image of one level, as bioformats2raw (0.4, zarr v2) or ome-zarr 0.5 write it."""
    kinds = {"t": "time", "c": "channel"}
    multiscales = [{"version": version, "axes": [{"name": a, "type": kinds.get(a, "space")} for a in axes],
                    "datasets": [{"path": "0", "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0] * (len(axes) - 3) + [40.0, 4.0, 4.0]}]}]}]
    if version == "0.2":  # before axes and scales were named: always t, c, z, y, x
        del multiscales[0]["axes"], multiscales[0]["datasets"][0]["coordinateTransformations"]
    group = zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)
    names = {"dimension_names": list(axes)} if version == "0.5" else {}
    group.create_array("0", shape=data.shape, chunks=(1,) * (data.ndim - 3) + (8, 16, 16), dtype=data.dtype,
                       **names)[:] = data
    group.attrs.update({"multiscales": multiscales} if version != "0.5" else
                       {"ome": {"version": version, "multiscales": multiscales}})


def test_the_examples_in_the_axes_docstrings_hold():
    assert doctest.testmod(densepred.io.axes).failed == 0


@pytest.mark.parametrize(("version", "key"), [("0.2", ""), ("0.4", ""), ("0.4", ":0"), ("0.5", "")])
def test_a_bioformats2raw_tczyx_image_is_predicted_as_its_volume(tmp_path, version, key):
    volume = np.random.default_rng(1).integers(0, 255, (11, 37, 29), dtype=np.uint8)
    ome_image(tmp_path / "in.zarr", volume[None, None], "tczyx", version)
    config, net = net_config(tmp_path, 3, 1)
    got = predicted(config, f"{tmp_path / 'in.zarr'}{key}", tmp_path, "--mirror")
    np.testing.assert_allclose(got, densepred.predict_dense(net, volume, mirror=True), rtol=0, atol=1e-6)
    assert main(["predict", str(config), "--input", str(tmp_path / "in.zarr"), "--output", str(tmp_path / "o.zarr"),
                 "--quiet"]) == 0  # and its voxel size goes to the output
    scale = zarr.open_group(tmp_path / "o.zarr").attrs["ome"]["multiscales"][0]["datasets"][0]
    assert scale["coordinateTransformations"][0]["scale"][1:] == ([1.0] * 3 if version == "0.2" else [40.0, 4.0, 4.0])


def test_a_two_channel_ome_zarr_image_feeds_a_two_channel_net(tmp_path):
    volume = np.random.default_rng(2).random((2, 9, 30, 26), dtype=np.float32)
    ome_image(tmp_path / "in.zarr", volume[None], "tczyx", "0.5")
    config, net = net_config(tmp_path, 3, 2)
    np.testing.assert_allclose(predicted(config, str(tmp_path / "in.zarr"), tmp_path),
                               densepred.predict_dense(net, volume), rtol=0, atol=1e-6)


def test_a_colour_tiff_feeds_a_three_channel_2d_net(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    config, net = net_config(tmp_path, 2, 3)
    np.testing.assert_allclose(predicted(config, str(tmp_path / "rgb.tif"), tmp_path),
                               densepred.predict_dense(net, np.moveaxis(rgb, -1, 0)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_a_fiji_zcyx_stack_feeds_a_two_channel_net(tmp_path, dims):
    """Fiji orders a hyperstack TZCYXS; ImageJ TIFFs keep that order, so channels come second."""
    stack = np.random.default_rng(4).random((6, 2, 31, 27), dtype=np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    config, net = net_config(tmp_path, dims, 2)
    got = predicted(config, str(tmp_path / "ij.tif"), tmp_path, "--mirror")
    channels_first = np.moveaxis(stack, 1, 0)
    expected = (densepred.predict_dense(net, channels_first, mirror=True) if dims == 3 else
                np.stack([densepred.predict_dense(net, channels_first[:, z], mirror=True) for z in range(6)], axis=1))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_movie_is_a_stack_for_a_2d_net_and_a_time_series_of_volumes_is_one_line(tmp_path, capsys):
    movie = np.random.default_rng(5).random((4, 1, 1, 30, 22), dtype=np.float32)
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TZCYX"})
    config, net = net_config(tmp_path, 2, 1)
    expected = np.stack([densepred.predict_dense(net, movie[t, 0, 0], mirror=True) for t in range(4)], axis=1)
    np.testing.assert_allclose(predicted(config, str(tmp_path / "movie.tif"), tmp_path, "--mirror"), expected,
                               rtol=0, atol=1e-6)
    ome_image(tmp_path / "series.zarr", np.zeros((3, 1, 9, 20, 20), np.uint8) + 7, "tczyx", "0.4")
    code = main(["predict", str(config), "--input", str(tmp_path / "series.zarr"), "--output",
                 str(tmp_path / "s.npy"), "--quiet"])
    one_error_line(capsys, code, f"is a time series of 3 volumes (TCZYX); densepred predicts one volume at a time: "
                                 f"name a time point, {tmp_path / 'series.zarr'}@t=0 to")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_time_point_of_a_series_of_volumes_is_predicted_as_that_volume(tmp_path, version, capsys):
    series = np.random.default_rng(6).integers(0, 255, (3, 1, 9, 21, 19), dtype=np.uint8)
    ome_image(tmp_path / "series.zarr", series, "tczyx", version)
    config, net = net_config(tmp_path, 3, 1)
    for t in (0, 2):
        np.testing.assert_allclose(predicted(config, f"{tmp_path / 'series.zarr'}@t={t}", tmp_path, "--mirror"),
                                   densepred.predict_dense(net, series[t, 0], mirror=True), rtol=0, atol=1e-6)
    out = str(tmp_path / "t1.zarr")
    args = ["predict", str(config), "--input", f"{tmp_path / 'series.zarr'}@t=1", "--output", out, "--quiet"]
    assert main(args) == 0  # into OME-Zarr: the voxel size of the series' spatial axes
    scale = zarr.open_group(out).attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"][1:] == [40.0, 4.0, 4.0]
    assert json.loads((tmp_path / "t1.zarr.densepred" / "run.json").read_text())["input"]["spec"].endswith("@t=1")
    capsys.readouterr()
    args[3] = f"{tmp_path / 'series.zarr'}@t=2"
    one_error_line(capsys, main([*args, "--resume"]), "cannot resume")  # another time point is another input


def test_a_time_point_of_a_fiji_hyperstack_and_the_mistakes_around_time_points(tmp_path, capsys):
    stack = np.random.default_rng(7).random((2, 5, 2, 23, 17), dtype=np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, metadata={"axes": "TZCYX"})
    config, net = net_config(tmp_path, 3, 2)
    np.testing.assert_allclose(predicted(config, f"{tmp_path / 'ij.tif'}@t=1", tmp_path),
                               densepred.predict_dense(net, np.moveaxis(stack[1], 1, 0)), rtol=0, atol=1e-6)
    np.save(tmp_path / "plain.npy", stack[0, :, 0])
    for spec, output, message in [
            (f"{tmp_path / 'ij.tif'}@t=2", "o.npy", "is past the end of its 2 time point(s): valid are @t=0 to @t=1"),
            (f"{tmp_path / 'plain.npy'}@t=0", "o.npy", "names a time point, but a npy file names no axes"),
            (f"{tmp_path / 'ij.tif'}@t=0", "o.zarr@t=0", "names a time point; @t=N selects a time point of an input"),
            (f"{tmp_path / 'ij.tif'}@t=-1", "o.npy", "names the time point '-1'; a time point is a whole number "
                                                      "from 0, e.g. "),
            (f"{tmp_path / 'ij.tif'}@t=", "o.npy", "names the time point ''")]:
        code = main(["predict", str(config), "--input", spec, "--output", str(tmp_path / output), "--quiet"])
        one_error_line(capsys, code, message)
    assert not (tmp_path / "o.zarr").exists()
    assert not list(tmp_path.glob("o.zarr@*"))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_view_reads_every_box_as_numpy_reads_the_reordered_array(data):
    axes = data.draw(st.sampled_from(["TCZYX", "ZCYX", "YXS", "CYXS", "TZYX", "ZYXC"]))
    points = data.draw(st.integers(1, 3)) if "T" in axes else 1
    sizes = {"T": points, "S": data.draw(st.integers(1, 4))}
    shape = [sizes.get(a) or data.draw(st.integers(1, 6)) for a in axes]
    if axes == "CYXS" and shape[-1] > 1:
        shape[0] = 1
    whole = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    time = data.draw(st.integers(0, points - 1)) if "T" in axes else None
    view = channel_first(whole, axes, "x", time)
    array = whole if time is None else np.take(whole, [time], axis=axes.index("T"))  # the time point, as its only one
    if time is not None:
        shape[axes.index("T")] = 1
    size = dict(zip(axes, shape, strict=True))
    dropped = {"T"} | ({"S"} if size.get("C", 1) > 1 else {"C"} if "S" in axes else set())
    kept = [a for a in axes if a not in dropped]
    names = ["C" if a == "S" else a for a in kept]
    expected = np.transpose(array.reshape([shape[axes.index(a)] for a in kept]) if len(kept) < len(axes) else array,
                            [names.index(a) for a in sorted(names, key="CZYX".index)])
    assert view.shape == expected.shape
    key = tuple(data.draw(st.one_of(st.integers(-n, n - 1), st.builds(slice, st.integers(0, n), st.integers(0, n))
                                    .filter(lambda s: s.start < s.stop))) for n in expected.shape)
    np.testing.assert_array_equal(np.asarray(view[key]), expected[key])
    np.testing.assert_array_equal(np.asarray(view), expected)


@pytest.mark.parametrize("form", ["ilastik", "h5py labels", "zarr v3 names", "xarray zarr v2"])
def test_axis_names_in_hdf5_and_zarr_put_channels_first(tmp_path, form):
    """ilastik exports ``zyxc`` (channels last) with an ``axistags`` attribute; zarr v3 arrays
    name their dimensions; xarray writes ``_ARRAY_DIMENSIONS`` into zarr v2."""
    volume = np.random.default_rng(6).random((9, 30, 26, 2), dtype=np.float32)  # z, y, x, c
    if form in ("ilastik", "h5py labels"):
        with h5py.File(tmp_path / "in.h5", "w") as f:
            f["raw"] = volume
            if form == "ilastik":
                f["raw"].attrs["axistags"] = json.dumps({"axes": [{"key": k, "typeFlags": 2, "resolution": 0,
                                                                   "description": ""} for k in "zyxc"]})
            else:
                for dim, label in zip(f["raw"].dims, "zyxc", strict=True):
                    dim.label = label
        spec = f"{tmp_path / 'in.h5'}:raw"
    else:
        v3 = form == "zarr v3 names"
        array = zarr.create_array(tmp_path / "in.zarr", shape=volume.shape, chunks=(8, 16, 16, 2), dtype="f4",
                                  zarr_format=3 if v3 else 2, **({"dimension_names": list("zyxc")} if v3 else {}))
        array[:] = volume
        if not v3:
            array.attrs["_ARRAY_DIMENSIONS"] = list("zyxc")
        spec = str(tmp_path / "in.zarr")
    config, net = net_config(tmp_path, 3, 2)
    expected = densepred.predict_dense(net, np.moveaxis(volume, -1, 0))
    np.testing.assert_allclose(predicted(config, spec, tmp_path), expected, rtol=0, atol=1e-6)


def test_ilastik_exports_train_the_same_net_as_the_plain_arrays(tmp_path):
    """ilastik exports raw data and labels as ``yxc`` with one channel; the labels were refused
    ("label shape [1, 120, 110] differs from the image's spatial shape")."""
    from tests.test_training import assert_trains_alike

    tags = json.dumps({"axes": [{"key": k, "typeFlags": 2, "resolution": 0, "description": ""} for k in "yxc"]})

    def ilastik(folder, config):
        with h5py.File(folder / "data.h5", "a") as f:
            for name in ("raw", "label"):
                data = f[name][...][:, :, None]
                del f[name]
                f[name] = data
                f[name].attrs["axistags"] = tags

    assert_trains_alike(tmp_path, ilastik)


@pytest.mark.slow  # 8 s; time points in one process stay in the default run
def test_a_time_point_feeds_a_model_from_elsewhere_and_a_cluster(tmp_path):
    from safetensors.torch import save_file

    from tests.test_foreign import UNet, trained_looking

    series = np.random.default_rng(8).random((3, 19, 26, 23), dtype=np.float32)
    tifffile.imwrite(tmp_path / "series.tif", series, imagej=True, metadata={"axes": "TZYX"},
                     compression="zlib")  # read by its strips, in this process and in the cluster's
    model = trained_looking(UNet(), seed=7).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet.safetensors")
    assert main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", '{"dims": 3, "depth": 2, '
                 '"width": 4}', "--weights", str(tmp_path / "unet.safetensors"), "--input",
                 f"{tmp_path / 'series.tif'}@t=2", "--output", str(tmp_path / "m.npy"), "--quiet"]) == 0
    net = densepred.from_torch(model, dims=3, in_channels=1)
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), densepred.predict_dense(net, series[2], mode="exact"),
                               rtol=0, atol=1e-5)
    config, own = net_config(tmp_path, 3, 1)
    assert main(["predict", str(config), "--input", f"{tmp_path / 'series.tif'}@t=1", "--output",
                 str(tmp_path / "c.zarr"), "--quiet", "--workers", "1", "--tile", "9,13,12"]) == 0
    np.testing.assert_allclose(zarr.open_group(tmp_path / "c.zarr")["0"][...], densepred.predict_dense(own, series[1]),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize(("zarr_format", "separator", "shards", "axes"), [
    (2, ".", None, "tczyx"), (2, "/", None, "tczyx"), (3, "/", None, "tczyx"), (3, ".", None, "tczyx"),
    (3, "/", (2, 1, 8, 16, 16), "tczyx"), (3, "/", None, "czyxt")])
def test_a_time_points_stamp_covers_its_own_chunks_as_an_acquisition_goes_on(tmp_path, zarr_format, separator,
                                                                             shards, axes):
    from densepred.io import ArraySpec, input_stamp

    shape = {"t": 4, "c": 1, "z": 9, "y": 21, "x": 19}
    layout = {"chunk_key_encoding": {"name": "default", "separator": separator}, "dimension_names": list(axes),
              "shards": shards} if zarr_format == 3 else {"chunk_key_encoding": {"name": "v2", "separator": separator}}
    array = zarr.create_array(tmp_path / "m.zarr", shape=[shape[a] for a in axes], dtype="float32",
                              chunks=[1 if a in "tc" else 8 for a in axes], zarr_format=zarr_format, **layout)
    if zarr_format == 2:
        array.attrs["_ARRAY_DIMENSIONS"] = list(axes)
    array[...] = np.random.default_rng(3).random(array.shape, dtype=np.float32)
    at = {a: slice(None) for a in axes}
    spec = ArraySpec.parse(f"{tmp_path / 'm.zarr'}@t=1")
    stamp = input_stamp(spec)
    assert 0 < stamp["files"] < len([p for p in (tmp_path / "m.zarr").rglob("*") if p.is_file()])
    array[tuple({**at, "t": 3}[a] for a in axes)] = 0.5  # a later time point, then one appended
    array.resize([shape[a] + (a == "t") for a in axes])
    array[tuple({**at, "t": 4}[a] for a in axes)] = 0.25
    assert input_stamp(spec) == stamp  # with shards of two time points: t=3 and t=4 are in others
    array[tuple({**at, "t": 1, "z": 5}[a] for a in axes)] = 0.75
    assert input_stamp(spec) != stamp
