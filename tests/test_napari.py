"""The napari plugin's logic without Qt: requests from a layer, the worker's task, progress, cancel, layers.

Layers live in a ``napari.components.ViewerModel`` (no canvas); results are compared with
:func:`densepred.predict_dense` and with the window-by-window definition.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

import densepred
from densepred.errors import DensePredError
from densepred.interfaces.napari_plugin.request import ImageSource, describe_config, request_from_fields
from densepred.interfaces.napari_plugin.sample import CONFIG_KEY, membranes_sample
from densepred.interfaces.napari_plugin.task import PredictionTask, notify

napari = pytest.importorskip("napari")
from napari.components import ViewerModel  # noqa: E402
from napari.layers import Layer  # noqa: E402

SCALE, TRANSLATE = (4.0, 2.0, 2.0), (100.0, -6.0, 10.0)


@pytest.fixture
def volume():
    return np.random.default_rng(5).random((13, 61, 47), dtype=np.float32)


@pytest.fixture
def viewer(volume):
    model = ViewerModel()
    model.add_image(volume, name="em", scale=SCALE, translate=TRANSLATE)
    return model


def fields(config, **change):
    return {"config": str(config), "tile": "6,19,17", "mode": "mfp", **change}


def run(viewer, request):
    """Run a task and add its layers, as the widget does on the GUI thread."""
    outcome = PredictionTask(request).outcome()
    assert outcome.message is None, outcome.message
    for data, kwargs, layer_type in outcome.layers:
        viewer.add_layer(Layer.create(data, kwargs, layer_type))
    return viewer.layers[-1]


def test_probabilities_land_on_the_image_with_predict_dense_values(viewer, config, volume):
    request = request_from_fields(ImageSource.from_layer(viewer.layers["em"]), fields(config, mirror=False))
    layer = run(viewer, request)

    net = densepred.create_prediction_net(densepred.load_config(config))
    expected = densepred.predict_dense(net, volume, tile_shape=(6, 19, 17), mode="mfp")
    assert layer.__class__.__name__ == "Image"
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
    offset = net.geometry.offset
    assert tuple(layer.scale) == (1.0, *SCALE)
    assert tuple(layer.translate) == (0.0, *(t + o * s for t, o, s in zip(TRANSLATE, offset, SCALE, strict=True)))
    # the output voxel k lies on the image voxel it is centred on, in world coordinates
    world = layer.data_to_world((0, 1, 2, 3))
    assert tuple(world[1:]) == tuple(viewer.layers["em"].data_to_world([1 + offset[0], 2 + offset[1],
                                                                           3 + offset[2]]))


def test_mirrored_labels_cover_the_image_as_a_labels_layer(viewer, config, volume):
    request = request_from_fields(ImageSource.from_layer(viewer.layers["em"]), fields(config, output="labels"))
    layer = run(viewer, request)

    net = densepred.create_prediction_net(densepred.load_config(config))
    probabilities = densepred.predict_dense(net, volume, tile_shape=(6, 19, 17), mode="mfp", mirror=True)
    assert layer.__class__.__name__ == "Labels"
    assert layer.data.dtype == np.uint8
    np.testing.assert_array_equal(layer.data, probabilities.argmax(axis=0))
    assert tuple(layer.scale) == SCALE
    assert tuple(layer.translate) == TRANSLATE


def test_one_chosen_class_is_a_layer_without_a_class_axis(viewer, config, volume):
    request = request_from_fields(ImageSource.from_layer(viewer.layers["em"]), fields(config, classes="2"))
    layer = run(viewer, request)
    net = densepred.create_prediction_net(densepred.load_config(config))
    expected = densepred.predict_dense(net, volume, tile_shape=(6, 19, 17), mode="mfp", mirror=True)[2]
    np.testing.assert_array_equal(layer.data, expected)
    assert tuple(layer.scale) == SCALE
    assert tuple(layer.translate) == TRANSLATE


def two_d_net(folder, in_channels, layers):
    """A config of a 2D net and its random weights."""
    from densepred.networks.weights import save_weights

    path = folder / "two.toml"
    path.write_text(f'name = "two"\nsave_dir = "run"\n[network]\ndims = 2\nin_channels = {in_channels}\n'
                    f'n_classes = 2\nlayers = [{layers}]\n')
    torch.manual_seed(0)
    save_weights(densepred.build_net(densepred.load_config(path)), folder / "run" / "two-LAST.safetensors")
    return path


def test_a_2d_net_over_a_stack_shifts_only_y_and_x(tmp_path):
    path = two_d_net(tmp_path, 1, "{ filters = 4, kernel = 3, pool = 2 }, { filters = 4, kernel = 3 }")
    stack = np.random.default_rng(2).random((5, 37, 41), dtype=np.float32)
    viewer = ViewerModel()
    viewer.add_image(stack, name="stack", scale=SCALE, translate=TRANSLATE)
    request = request_from_fields(ImageSource.from_layer(viewer.layers["stack"]),
                                  {"config": str(path), "mirror": False})
    layer = run(viewer, request)
    net = densepred.create_prediction_net(densepred.load_config(path))
    np.testing.assert_array_equal(layer.data, densepred.predict_dense(net, stack))
    oy, ox = net.geometry.offset
    assert tuple(layer.translate)[1:] == (TRANSLATE[0], TRANSLATE[1] + oy * 2.0, TRANSLATE[2] + ox * 2.0)


def test_a_model_from_elsewhere_equals_its_whole_volume_forward(tmp_path):
    model_file = tmp_path / "tiny.py"
    model_file.write_text("import torch\n\nclass Tiny(torch.nn.Module):\n    def __init__(self):\n"
                          "        super().__init__()\n        torch.manual_seed(3)\n"
                          "        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)\n\n"
                          "    def forward(self, x):\n        return self.conv(x)\n")
    image = np.random.default_rng(7).random((9, 21, 19), dtype=np.float32)
    viewer = ViewerModel()
    viewer.add_image(image, name="raw", scale=SCALE)
    request = request_from_fields(ImageSource.from_layer(viewer.layers["raw"]),
                                  {"model": f"{model_file}:Tiny", "mode": "exact", "tile": "8,16,16"})
    layer = run(viewer, request)
    from densepred.networks.loading import load_model

    with torch.no_grad():
        logits = load_model(f"{model_file}:Tiny")(torch.from_numpy(image)[None, None])[0]
    np.testing.assert_allclose(layer.data, torch.softmax(logits, 0).numpy(), atol=1e-6)
    assert tuple(layer.translate) == (0.0, 0.0, 0.0, 0.0)


def test_a_zarr_backed_layer_is_predicted_to_a_multiscale_file_and_opened_lazily(tmp_path, config):
    volume = np.random.default_rng(6).random((7, 301, 283), dtype=np.float32)  # two levels: 301 > 256
    source = tmp_path / "em.zarr"
    zarr.create_array(source, data=volume, chunks=(8, 32, 32))
    viewer = ViewerModel()
    viewer.add_image(zarr.open_array(source, mode="r"), name="em", scale=SCALE)
    image = ImageSource.from_layer(viewer.layers["em"])
    assert image.file == str(source)
    request = request_from_fields(image, fields(config, output="labels", tile="", mode=""))
    layer = run(viewer, request)

    output = tmp_path / "em-stream-labels.ome.zarr"
    assert layer.multiscale
    assert len(layer.data) == 2
    net = densepred.create_prediction_net(densepred.load_config(config))
    probabilities = densepred.predict_dense(net, volume, mirror=True)
    np.testing.assert_array_equal(np.asarray(layer.data[0]), probabilities.argmax(axis=0))
    assert zarr.open_group(output, mode="r").attrs["densepred"]["complete"]
    # an OME-Zarr opened by a reader plugin: its levels, and the path it came from
    opened = SimpleNamespace(name="seg", rgb=False, multiscale=True, data=layer.data, scale=SCALE,
                             translate=(0.0,) * 3, source=SimpleNamespace(path=str(output) + "/"))
    assert ImageSource.from_layer(opened).file == str(output)


def test_an_n5_layer_opened_by_the_reader_is_predicted_file_to_file_beside_it(tmp_path, config):
    """A layer densepred's reader opened from an N5 container (the Java tools' format) names
    its dataset, so it is predicted file to file like a zarr-backed one, placed as the file says."""
    from densepred.interfaces.napari_plugin.reader import get_reader
    from tests.test_n5_inputs import container, write_n5

    volume = np.random.default_rng(9).integers(0, 255, (9, 44, 40), dtype=np.uint8)
    root = container(tmp_path / "em.n5")
    write_n5(root / "raw" / "s0", volume, (4, 16, 16), "gzip",
             attributes={"resolution": [4, 4, 40], "units": ["nm"] * 3, "offset": [8, 0, 80]})
    viewer = ViewerModel()
    [(data, kwargs, _)] = get_reader(str(root))(str(root))
    viewer.add_image(data, **kwargs)
    image = ImageSource.from_layer(viewer.layers["em:raw"])
    assert image.file == f"{root}:raw"
    layer = run(viewer, request_from_fields(image, fields(config, output="labels", tile="", mode="")))
    net = densepred.create_prediction_net(densepred.load_config(config))
    np.testing.assert_array_equal(np.asarray(layer.data), densepred.predict_dense(net, volume, mirror=True).argmax(0))
    written = zarr.open_group(tmp_path / "em-raw-stream-labels.ome.zarr", mode="r")  # the dataset in its name
    assert written.attrs["densepred"]["complete"]
    assert tuple(layer.scale) == (40.0, 4.0, 4.0)
    assert tuple(layer.translate) == (80.0, 0.0, 8.0)


def test_cancel_stops_within_one_batch_and_a_file_output_resumes(tmp_path, config, volume):
    source = tmp_path / "em.zarr"
    zarr.create_array(source, data=volume, chunks=(8, 32, 32))
    image = ImageSource(zarr.open_array(source, mode="r"), "em", SCALE, (0.0,) * 3, str(source))
    request = request_from_fields(image, fields(config, tile="6,13,13", mirror=True))
    forwards, done_at_cancel = [], []
    task = PredictionTask(request)

    def observe(report):
        if report.fraction > 0 and not task.cancelled:
            done_at_cancel.append(len(forwards))
            task.cancel()

    task.on_progress = observe
    with _counting_forwards(forwards):
        outcome = task.outcome()
    assert outcome.cancelled
    assert outcome.layers == []
    assert "press Predict again" in outcome.message
    assert len(forwards) <= done_at_cancel[0] + 1  # at most the batch already being computed
    output = tmp_path / "em-stream.ome.zarr"
    assert not zarr.open_group(output, mode="r").attrs.get("densepred", {}).get("complete")

    outcome = PredictionTask(request).outcome()  # Predict again: resumes and finishes
    assert outcome.message is None
    net = densepred.create_prediction_net(densepred.load_config(config))
    expected = densepred.predict_dense(net, volume, tile_shape=(6, 13, 13), mode="mfp", mirror=True)
    np.testing.assert_array_equal(np.asarray(outcome.layers[0][0]), expected)


def test_cancel_of_an_in_memory_run_returns_no_layer(viewer, config):
    request = request_from_fields(ImageSource.from_layer(viewer.layers["em"]), fields(config, tile="6,13,13"))
    task = PredictionTask(request)
    task.on_progress = lambda report: task.cancel()
    outcome = task.outcome()
    assert outcome.cancelled
    assert outcome.layers == []
    assert outcome.message == "prediction cancelled"


def test_progress_reports_rise_to_one_with_a_rate(viewer, config):
    reports = []
    request = request_from_fields(ImageSource.from_layer(viewer.layers["em"]), fields(config, tile="6,13,13"))
    PredictionTask(request, on_progress=reports.append).outcome()
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert "voxels/s" in reports[-1].text


@pytest.mark.parametrize(("change", "message"), [
    ({"config": "missing.toml"}, "missing.toml"),
    ({"tile": "6,x"}, "tile '6,x' is invalid"),
    ({"memory_limit": "lots"}, "memory limit 'lots' is invalid"),
    ({"mode": "blend"}, "mode 'blend' is not for a densepred net"),
    ({"classes": "7", "mirror": True}, "classes [7] do not exist"),
])
def test_a_mistake_is_one_notified_line(viewer, config, change, message):
    received = []
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(received.append)
    try:
        outcome = None
        try:
            request = request_from_fields(ImageSource.from_layer(viewer.layers["em"]), {**fields(config), **change})
            outcome = PredictionTask(request).outcome()
        except DensePredError as exc:
            from densepred.interfaces.napari_plugin.task import Outcome, describe_failure

            outcome = Outcome([], describe_failure(exc))
        notify(outcome)
    finally:
        notification_manager.notification_ready.disconnect(received.append)
    assert outcome.layers == []
    assert message in outcome.message
    assert "\n" not in outcome.message
    assert [n.message for n in received] == [outcome.message]
    assert received[0].severity == "error"


def test_a_config_is_described_in_one_line(config):
    text = describe_config(str(config))
    assert text.startswith("stream: 3D, 3 classes, field of view")
    assert "\n" not in text
    assert "not found" in describe_config(str(Path(config).with_name("nope.toml")))


def test_the_sample_is_made_once_and_names_its_config(tmp_path):
    layers = membranes_sample(tmp_path / "sample", steps=3)
    (raw, raw_kwargs, raw_type), (truth, _, truth_type) = layers
    assert raw_type == "image"
    assert truth_type == "labels"
    assert raw.shape == truth.shape
    config = Path(raw_kwargs["metadata"][CONFIG_KEY])
    assert config.exists()
    assert (config.parent / "run" / "membranes-LAST.safetensors").exists()
    stamp = (config.parent / "run" / "membranes-LAST.safetensors").stat().st_mtime_ns
    membranes_sample(tmp_path / "sample", steps=3)
    assert (config.parent / "run" / "membranes-LAST.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder left


def test_the_manifest_names_importable_contributions():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("densepred")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Dense prediction"]
    assert [s.key for s in manifest.contributions.sample_data] == ["membranes"]
    for command in manifest.contributions.commands:
        module, _, name = command.python_name.partition(":")
        if module.endswith(".widget"):
            continue  # imports Qt: tests/test_napari_widget.py
        assert callable(getattr(__import__(module, fromlist=[name]), name))


class _counting_forwards:
    """Count the batches every DenseEngine computes while active."""

    def __init__(self, calls: list):
        self.calls = calls

    def __enter__(self):
        from densepred.networks import engines

        self.original = engines.DenseEngine.__call__
        calls, original = self.calls, self.original

        def counted(engine, x):
            calls.append(threading.get_ident())
            return original(engine, x)

        engines.DenseEngine.__call__ = counted
        return self

    def __exit__(self, *exc):
        from densepred.networks import engines

        engines.DenseEngine.__call__ = self.original


def test_an_rgb_layer_feeds_a_three_channel_2d_net(tmp_path):
    """Its colour samples are the channels (the layer was refused as RGB)."""
    path = two_d_net(tmp_path, 3, "{ filters = 4, kernel = 3 }")
    image = np.random.default_rng(3).integers(0, 255, (37, 41, 3), dtype=np.uint8)
    viewer = ViewerModel()
    viewer.add_image(image, name="photo", rgb=True, scale=SCALE[1:], translate=TRANSLATE[1:])
    layer = run(viewer, request_from_fields(ImageSource.from_layer(viewer.layers["photo"]), {"config": str(path)}))
    net = densepred.create_prediction_net(densepred.load_config(path))
    np.testing.assert_array_equal(layer.data, densepred.predict_dense(net, np.moveaxis(image, -1, 0), mirror=True))
    assert tuple(layer.scale)[1:] == SCALE[1:]


def test_a_layer_with_t_c_z_y_x_labels_is_predicted_as_its_volume(viewer, config, volume):
    """napari-ome-zarr opens bioformats2raw's images with their five axes named."""
    model = ViewerModel()
    model.add_image(volume[None, None], name="tczyx", axis_labels=("t", "c", "z", "y", "x"),
                    scale=(1.0, 1.0, *SCALE), translate=(0.0, 0.0, *TRANSLATE))
    layer = run(model, request_from_fields(ImageSource.from_layer(model.layers["tczyx"]), fields(config)))
    expected = run(viewer, request_from_fields(ImageSource.from_layer(viewer.layers["em"]), fields(config)))
    np.testing.assert_array_equal(layer.data, expected.data)
    assert tuple(layer.translate) == tuple(expected.translate)


def test_the_time_point_the_viewer_shows_is_predicted_and_shown_at_that_time(config, volume):
    """A layer of (t, c, z, y, x), as napari-ome-zarr opens a time series: the widget passes the
    time point on the viewer's slider; the result lies on the layer's axes at that time only."""
    from densepred.interfaces.napari_plugin.request import shown_time_point

    model = ViewerModel()
    movie = np.stack([volume, volume[::-1], volume[:, ::-1]])[:, None]
    model.add_image(movie, name="movie", axis_labels=("t", "c", "z", "y", "x"), scale=(2.0, 1.0, *SCALE),
                    translate=(5.0, 0.0, *TRANSLATE))
    with pytest.raises(DensePredError, match=r"time series of 3 volumes \(TCZYX\); densepred predicts one volume at "
                                             r"a time: show the time point to predict in the viewer"):
        ImageSource.from_layer(model.layers["movie"])
    model.dims.set_point(0, 9.0)  # world time 5 + 2 * 2
    assert shown_time_point(model, model.layers["movie"]) == 2
    image = ImageSource.from_layer(model.layers["movie"], 2)
    probabilities = run(model, request_from_fields(image, fields(config)))
    labels = run(model, request_from_fields(image, fields(config, output="labels")))
    plain = ViewerModel()
    plain.add_image(volume[:, ::-1], name="t2", scale=SCALE, translate=TRANSLATE)
    expected = run(plain, request_from_fields(ImageSource.from_layer(plain.layers["t2"]), fields(config)))
    assert probabilities.data.shape == (1, *expected.data.shape)  # (t, classes as the channels, z, y, x)
    np.testing.assert_array_equal(probabilities.data[0], expected.data)
    np.testing.assert_array_equal(labels.data[0, 0], expected.data.argmax(axis=0))
    for layer in (probabilities, labels):
        assert tuple(layer.scale) == (2.0, 1.0, *SCALE)
        assert tuple(layer.translate) == (9.0, 0.0, *expected.translate[1:])
        assert layer.name.startswith("movie t=2 ")
    # without a channel axis the classes go in front; another time point is another layer
    model.add_image(movie[:, 0], name="tzyx", axis_labels=("t", "z", "y", "x"))
    model.dims.set_point(model.dims.ndim - 4, 1.0)
    assert shown_time_point(model, model.layers["tzyx"]) == 1
    layer = run(model, request_from_fields(ImageSource.from_layer(model.layers["tzyx"], 1), fields(config)))
    plain.add_image(volume[::-1], name="t1", scale=SCALE, translate=TRANSLATE)
    expected = run(plain, request_from_fields(ImageSource.from_layer(plain.layers["t1"]), fields(config)))
    assert layer.data.shape == (expected.data.shape[0], 1, *expected.data.shape[1:])  # (classes, t, z, y, x)
    np.testing.assert_array_equal(layer.data[:, 0], expected.data)
    assert tuple(layer.translate)[:2] == (0.0, 1.0)


def test_a_time_point_of_a_zarr_series_is_predicted_file_to_file_beside_it(tmp_path, config, volume):
    source = tmp_path / "movie.zarr"
    series = np.stack([volume, volume[::-1]])
    zarr.create_array(source, data=series, chunks=(1, 8, 32, 32), dimension_names=["t", "z", "y", "x"])
    model = ViewerModel()
    model.add_image(zarr.open_array(source, mode="r"), name="movie", axis_labels=("t", "z", "y", "x"))
    image = ImageSource.from_layer(model.layers["movie"], 1)
    assert image.file == f"{source}@t=1"
    request = request_from_fields(image, fields(config, output="labels", tile="", mode=""))
    assert request.output_path() == tmp_path / "movie-t1-stream-labels.ome.zarr"
    layer = run(model, request)
    net = densepred.create_prediction_net(densepred.load_config(config))
    np.testing.assert_array_equal(np.asarray(layer.data)[0], densepred.predict_dense(net, series[1], mirror=True)
                                  .argmax(axis=0))
    assert layer.translate[0] == 1.0


def test_a_time_series_opened_by_the_reader_is_predicted_at_the_shown_time_file_to_file(tmp_path, config, volume):
    """bioformats2raw's (t, c, z, y, x) with one channel, opened by densepred's reader: the layer
    keeps its time axis (it was taken as channels) and is known to be its file's time point."""
    from napari.layers._source import layer_source

    from densepred.interfaces.napari_plugin.reader import read_ome_zarr
    from densepred.interfaces.napari_plugin.request import shown_time_point
    from tests.test_input_axes import ome_image

    series = np.stack([volume, volume[:, ::-1]])[:, None]
    ome_image(tmp_path / "movie.ome.zarr", series, "tczyx", "0.5")
    model = ViewerModel()
    data, kwargs, _ = read_ome_zarr(str(tmp_path / "movie.ome.zarr"))[0]
    with layer_source(path=str(tmp_path / "movie.ome.zarr")):
        layer = model.add_image(data, **kwargs)[0]
    assert layer.axis_labels == ("t", "z", "y", "x")
    model.dims.set_point(0, 1.0)
    image = ImageSource.from_layer(layer, shown_time_point(model, layer))
    assert image.file == f"{tmp_path / 'movie.ome.zarr'}@t=1"
    result = run(model, request_from_fields(image, fields(config, tile="", mode="")))
    assert (tmp_path / "movie-t1-stream.ome.zarr").is_dir()
    net = densepred.create_prediction_net(densepred.load_config(config))
    np.testing.assert_allclose(np.asarray(result.data[0] if result.multiscale else result.data)[:, 0],
                               densepred.predict_dense(net, series[1, 0], mirror=True), rtol=0, atol=1e-6)
