"""densepred's napari reader (no canvas needed): a predicted OME-Zarr opens as lazy layers with
its levels, physical scale and translation, one layer per class or a labels layer; an HDF5 file
opens each 2D/3D dataset, label datasets as labels."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import zarr

from densepred.interfaces.napari_plugin.reader import get_reader
from densepred.interfaces.napari_plugin.request import SOURCE_KEY
from tests.test_predict_files import predict


def test_a_probability_output_opens_per_class_with_its_placement(config, tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((13, 47, 39), dtype=np.float32))
    out = tmp_path / "p.zarr"
    assert predict(config, tmp_path, str(out), "--levels", "2", "--voxel-size", "40,4,4", "--dtype", "uint8") == 0
    [(data, kwargs, kind)] = get_reader(str(out))(str(out))
    group = zarr.open_group(out, mode="r")
    transforms = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert kind == "image"
    assert kwargs["multiscale"]
    assert kwargs["channel_axis"] == 0
    assert len(kwargs["name"]) == 3  # one layer per class
    assert kwargs["scale"] == [float(v) for v in transforms[0]["scale"][1:]] == [40.0, 4.0, 4.0]
    assert kwargs["translate"] == [float(v) for v in transforms[1]["translation"][1:]]
    assert kwargs["contrast_limits"] == (0.0, 255.0)
    np.testing.assert_array_equal(np.asarray(data[0]), group["0"][:])
    np.testing.assert_array_equal(np.asarray(data[1]), group["1"][:])


def test_an_argmax_output_opens_as_labels(config, tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((13, 47, 39), dtype=np.float32))
    out = tmp_path / "l.zarr"
    assert predict(config, tmp_path, str(out), "--argmax", "--levels", "1") == 0
    [(data, kwargs, kind)] = get_reader(str(out))(str(out))
    assert kind == "labels"
    assert not kwargs["multiscale"]
    np.testing.assert_array_equal(np.asarray(data), zarr.open_group(out, mode="r")["0"][:])


def test_an_hdf5_file_opens_every_image_dataset(tmp_path):
    raw = np.random.default_rng(3).random((5, 20, 30), dtype=np.float32)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = raw
        f["group/label"] = (raw > 0.5).astype(np.uint8)
        f["table"] = np.arange(4)  # 1D: not an image
    layers = get_reader(str(tmp_path / "v.h5"))(str(tmp_path / "v.h5"))
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [("v:group/label", "labels"), ("v:raw", "image")]
    np.testing.assert_array_equal(np.asarray(layers[1][0]), raw)
    from densepred.interfaces.napari_plugin.request import ImageSource

    layer = SimpleNamespace(data=layers[1][0], rgb=False, multiscale=False, scale=(1.0,) * 3, translate=(0.0,) * 3,
                            name="v:raw", metadata=layers[1][1]["metadata"])
    assert ImageSource.from_layer(layer).file == f"{tmp_path / 'v.h5'}:raw"  # so the widget predicts it file to file


def test_other_paths_are_left_to_other_readers(tmp_path):
    zarr.create_array(tmp_path / "plain.zarr", shape=(4, 4), dtype="f4")
    assert get_reader(str(tmp_path / "plain.zarr")) is None
    assert get_reader(str(tmp_path / "missing.h5")) is None
    assert get_reader([str(tmp_path / "a.h5")]) is None


def test_an_image_scaled_as_a_whole_opens_where_its_prediction_lies(config, tmp_path):
    """An OME-Zarr 0.4 image whose multiscale scales all its levels (and whose level has a
    translation) opens where densepred places its prediction: both from the same transforms."""
    from tests.test_ome_zarr import ome_input

    ome_input(tmp_path / "in.zarr", np.random.default_rng(3).random((11, 40, 36), dtype=np.float32),
              (40.0, 4.0, 4.0), (400.0, -8.0, 12.0), outer_scale=[1.0, 2.0, 2.0])
    [(_, image, _)] = get_reader(str(tmp_path / "in.zarr"))(str(tmp_path / "in.zarr"))
    assert image["scale"] == [40.0, 8.0, 8.0]
    assert image["translate"] == [400.0, -16.0, 24.0]
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror", input_spec=str(tmp_path / "in.zarr")) == 0
    [(_, output, _)] = get_reader(str(tmp_path / "o.zarr"))(str(tmp_path / "o.zarr"))
    assert (output["scale"], output["translate"]) == (image["scale"], image["translate"])


def test_an_n5_container_opens_each_dataset_placed_as_its_prediction(config, tmp_path):
    """A multiscale N5 group opens as one multiscale layer, a plain dataset as a layer, each
    where densepred places its prediction."""
    from tests.test_n5_inputs import container, write_n5

    data = np.random.default_rng(4).integers(0, 255, (9, 40, 36), dtype=np.uint8)
    root = container(tmp_path / "v.n5")
    for level in range(2):
        write_n5(root / "em" / f"s{level}", data[:, ::2**level, ::2**level].copy(), (4, 16, 16), "gzip", attributes={
            "pixelResolution": {"dimensions": [4, 4, 40], "unit": "nm"}, "downsamplingFactors": [2**level] * 2 + [1]})
    write_n5(root / "mask", (data > 100).astype(np.uint8), (9, 40, 36))
    layers = get_reader(str(root))(str(root))
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["v:em", "v:mask"]
    (levels, em, kind), (mask, masked, _) = layers
    assert kind == "image"
    assert em["multiscale"]
    assert len(levels) == 2
    np.testing.assert_array_equal(np.asarray(levels[0]), data)
    np.testing.assert_array_equal(np.asarray(levels[1]), data[:, ::2, ::2])
    np.testing.assert_array_equal(np.asarray(mask), data > 100)
    assert "scale" not in masked
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror", input_spec=f"{root}:em") == 0
    [(_, output, _)] = get_reader(str(tmp_path / "o.zarr"))(str(tmp_path / "o.zarr"))
    assert (em["scale"], em["translate"]) == ([40.0, 4.0, 4.0], [0.0, 0.0, 0.0]) == (output["scale"],
                                                                                   output["translate"])


def test_a_bigdataviewer_file_opens_its_views_unsigned_and_placed(tmp_path):
    from tests.test_hdf5_filters import BDV_XML

    data = np.random.default_rng(5).integers(0, 65536, (9, 40, 34)).astype(np.uint16)
    with h5py.File(tmp_path / "dataset.h5", "w") as f:
        f["s00/resolutions"] = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 1.0]])
        f["t00000/s00/0/cells"] = data.astype(np.int16)
        f["t00000/s00/1/cells"] = data[:, ::2, ::2].astype(np.int16)
    (tmp_path / "dataset.xml").write_text(BDV_XML)
    [(view, kwargs, _)] = [layer for layer in get_reader(str(tmp_path / "dataset.h5"))(str(tmp_path / "dataset.h5"))
                              if layer[1]["name"].endswith("cells")]
    assert kwargs["name"] == "dataset:t00000/s00/0/cells"  # level 0 only
    np.testing.assert_array_equal(np.asarray(view), data)
    assert kwargs["scale"] == pytest.approx([2.0, 0.4, 0.4])


def test_a_precomputed_volume_opens_by_its_info_file_with_its_scales_placed_as_its_prediction(config, tmp_path):
    from tests.test_precomputed_inputs import DATA

    info = str(DATA / "sharded-jpeg" / "info")
    [(levels, kwargs, kind)] = get_reader(info)(info)
    assert (kind, kwargs["multiscale"], len(levels)) == ("image", True, 2)
    np.testing.assert_array_equal(np.asarray(levels[0]), np.load(DATA / "sharded-jpeg-4_4_40.npy")[0])
    np.testing.assert_array_equal(np.asarray(levels[1]), np.load(DATA / "sharded-jpeg-8_8_40.npy")[0])
    from densepred.interfaces.napari_plugin.request import ImageSource

    layer = SimpleNamespace(data=levels, rgb=False, multiscale=True, scale=kwargs["scale"],
                            translate=kwargs["translate"], name=kwargs["name"], metadata=kwargs["metadata"])
    source = ImageSource.from_layer(layer).file  # so the widget predicts it file to file
    assert source == kwargs["metadata"][SOURCE_KEY] == str(DATA / "sharded-jpeg")
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror", input_spec=source) == 0
    [(_, output, _)] = get_reader(str(tmp_path / "o.zarr"))(str(tmp_path / "o.zarr"))
    assert (kwargs["scale"], kwargs["translate"]) == ([40.0, 4.0, 4.0], [0.0, 0.0, 0.0]) == (output["scale"],
                                                                                           output["translate"])
    [(_, two, _)] = get_reader(str(DATA / "sharded-murmur"))(str(DATA / "sharded-murmur"))
    assert two["channel_axis"] == 0
    assert get_reader(str(tmp_path / "o.zarr" / "zarr.json")) is None


def test_an_image_stored_x_first_opens_in_z_y_x_order_under_its_prediction(config, tmp_path):
    """webknossos stores ``c, x, y, z``: the layer is put in z, y, x order, as densepred reads
    and predicts it, so the prediction lies over it."""
    volume = np.random.default_rng(6).random((9, 30, 26), dtype=np.float32)
    group = zarr.open_group(tmp_path / "wk.zarr", mode="w")
    group.create_array("0", data=np.ascontiguousarray(volume.T)[None], chunks=(1, 16, 16, 9),
                       dimension_names=["c", "x", "y", "z"])
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space"} for a in "xyz"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 4, 5, 40]}]}]}]}
    [(data, image, _)] = get_reader(str(tmp_path / "wk.zarr"))(str(tmp_path / "wk.zarr"))
    np.testing.assert_array_equal(np.asarray(data)[0], volume)
    assert (image["scale"], image["axis_labels"], image["channel_axis"]) == ([40.0, 5.0, 4.0], ["z", "y", "x"], 0)
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror", input_spec=str(tmp_path / "wk.zarr")) == 0
    [(_, output, _)] = get_reader(str(tmp_path / "o.zarr"))(str(tmp_path / "o.zarr"))
    assert (output["scale"], output["translate"]) == (image["scale"], image["translate"])


def test_an_mrc_tomogram_opens_placed_as_its_prediction_and_is_predicted_from_its_file(config, tmp_path):
    import mrcfile

    from densepred.interfaces.napari_plugin.request import ImageSource, request_from_fields

    volume = np.random.default_rng(9).random((13, 47, 39)).astype(np.float32)
    with mrcfile.new(tmp_path / "tomo.rec") as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = (13.48, 13.48, 27.0)
    path = str(tmp_path / "tomo.rec")
    [(data, kwargs, kind)] = get_reader(path)(path)
    np.testing.assert_array_equal(np.asarray(data), volume)
    assert (kind, kwargs["scale"], kwargs["translate"]) == ("image", [27.0, 13.48, 13.48], [0.0, 0.0, 0.0])
    layer = SimpleNamespace(data=data, rgb=False, multiscale=False, scale=kwargs["scale"],
                            translate=kwargs["translate"], name=kwargs["name"], metadata=kwargs["metadata"])
    assert ImageSource.from_layer(layer).file == path  # the widget predicts the file itself
    request = request_from_fields(ImageSource.from_layer(layer), {"config": str(config), "output": "labels"})
    assert request.output_path() == tmp_path / "tomo-stream-labels.ome.zarr"  # beside it, without .rec
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror", input_spec=path) == 0
    [(_, output, _)] = get_reader(str(tmp_path / "o.zarr"))(str(tmp_path / "o.zarr"))
    assert (output["scale"], output["translate"]) == (kwargs["scale"], kwargs["translate"])


def test_an_mrc_prediction_opens_with_its_classes_as_channels_and_its_labels_as_labels(config, tmp_path):
    volume = np.random.default_rng(11).random((13, 47, 39)).astype(np.float32)
    np.save(tmp_path / "in.npy", volume)
    assert predict(config, tmp_path, str(tmp_path / "p.mrc"), "--voxel-size", "30,8,8", "--unit", "nanometer") == 0
    assert predict(config, tmp_path, str(tmp_path / "l.mrc"), "--argmax") == 0
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "p.mrc"))(str(tmp_path / "p.mrc"))
    assert (kind, kwargs["channel_axis"], data.shape[0], kwargs["scale"]) == ("image", 0, 3, [300.0, 80.0, 80.0])
    [(labels, kwargs, kind)] = get_reader(str(tmp_path / "l.mrc"))(str(tmp_path / "l.mrc"))
    assert kind == "labels"
    assert "channel_axis" not in kwargs
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(data).argmax(axis=0))


def test_an_imaris_file_opens_per_channel_placed_as_its_prediction(config, tmp_path):
    from tests.test_imaris_inputs import write_imaris

    volume = np.random.default_rng(10).integers(0, 4096, (1, 2, 13, 47, 39), dtype=np.uint16)
    write_imaris(tmp_path / "cells.ims", volume)
    path = str(tmp_path / "cells.ims")
    [(data, kwargs, kind)] = get_reader(path)(path)
    assert (kind, kwargs["channel_axis"]) == ("image", 0)
    np.testing.assert_array_equal(np.asarray(data), volume[0])
    np.testing.assert_allclose(kwargs["scale"], [0.2, 0.1, 0.1])
    np.testing.assert_allclose(kwargs["translate"], [5.1, -2.95, 1.05])
    write_imaris(tmp_path / "one.ims", volume[:, :1])
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror", input_spec=str(tmp_path / "one.ims")) == 0
    [(_, output, _)] = get_reader(str(tmp_path / "o.zarr"))(str(tmp_path / "o.zarr"))
    np.testing.assert_allclose(output["scale"], kwargs["scale"])
    np.testing.assert_allclose(output["translate"], kwargs["translate"])
