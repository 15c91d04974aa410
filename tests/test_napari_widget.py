"""The napari dock widget, driven programmatically on an offscreen Qt platform.

The widget is built on a ``ViewerModel`` (no canvas: drawing layers needs a display, see
``docs/napari_widget_screenshot.py`` under Xvfb). Skipped where Qt cannot start (no Qt binding, or no
libGL for it); the logic beneath is tested without Qt in ``test_napari.py``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("napari")
try:
    from qtpy.QtWidgets import QApplication
except Exception as exc:  # no binding, or a binding without its system libraries
    pytest.skip(f"Qt cannot start here: {type(exc).__name__}: {exc}", allow_module_level=True)

import densepred
from densepred.interfaces.napari_plugin.widget import PredictWidget

SCALE = (3.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def qapp():
    return QApplication.instance() or QApplication([])


@pytest.fixture
def widget(qapp):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    image = np.random.default_rng(9).random((11, 53, 49), dtype=np.float32)
    viewer.add_image(image, name="em", scale=SCALE)
    made = PredictWidget(viewer)
    yield made
    if made.task is not None:
        made.task.cancel()
        wait_until(qapp, lambda: made.task is None)
    made.close()


@pytest.fixture
def notices():
    from napari.utils.notifications import notification_manager

    received = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)


def wait_until(qapp, condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        qapp.processEvents()
        time.sleep(0.01)


def test_predict_adds_the_probabilities_layer_on_the_image(qapp, widget, config):
    widget.config.value = str(config)
    widget.tile.value, widget.mode.value, widget.mirror.value = "6,19,17", "mfp", False
    assert widget.image.value is widget.viewer.layers["em"]
    assert widget.status.value.startswith("stream: 3D, 3 classes")
    widget.predict.native.click()
    wait_until(qapp, lambda: len(widget.viewer.layers) == 2)

    layer = widget.viewer.layers[-1]
    net = densepred.create_prediction_net(densepred.load_config(config))
    expected = densepred.predict_dense(net, widget.viewer.layers["em"].data, tile_shape=(6, 19, 17), mode="mfp")
    np.testing.assert_array_equal(layer.data, expected)
    offset = net.geometry.offset
    assert tuple(layer.translate) == (0.0, *(o * s for o, s in zip(offset, SCALE, strict=True)))
    assert widget.predict.enabled
    assert not widget.cancel.enabled
    assert widget.status.value.startswith("done; ")


def test_predict_takes_the_time_point_on_the_slider_of_a_series_of_volumes(qapp, widget, config):
    series = np.random.default_rng(4).random((3, 9, 41, 37), dtype=np.float32)
    widget.viewer.add_image(series, name="movie", axis_labels=("t", "z", "y", "x"))
    widget.image.value = widget.viewer.layers["movie"]
    widget.config.value = str(config)
    widget.tile.value, widget.mode.value, widget.mirror.value = "6,19,17", "mfp", False
    widget.viewer.dims.set_point(0, 2.0)
    widget.predict.native.click()
    wait_until(qapp, lambda: len(widget.viewer.layers) == 3)

    layer = widget.viewer.layers[-1]
    net = densepred.create_prediction_net(densepred.load_config(config))
    expected = densepred.predict_dense(net, series[2], tile_shape=(6, 19, 17), mode="mfp")
    np.testing.assert_array_equal(layer.data[:, 0], expected)  # (classes, t, z, y, x): shown at t = 2 only
    assert layer.name == "movie t=2 probabilities"
    assert tuple(layer.translate)[:2] == (0.0, 2.0)


def test_cancel_stops_the_run_and_adds_no_layer(qapp, widget, config, notices):
    widget.config.value = str(config)
    widget.tile.value, widget.mode.value = "6,13,13", "mfp"
    widget.predict.native.click()
    assert widget.cancel.enabled
    assert not widget.predict.enabled
    # cancelled while it starts: waiting for the bar races a busy machine, where the run can finish
    # between two event-loop turns (its last report and its end are handled in one)
    widget.cancel.native.click()
    wait_until(qapp, lambda: widget.task is None)
    assert len(widget.viewer.layers) == 1
    assert [n.message for n in notices] == ["prediction cancelled"]


def test_a_bad_config_is_one_error_notification(qapp, widget, tmp_path, notices):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[network]\ndims = 3\n')
    widget.config.value = str(bad)
    widget.predict.native.click()
    wait_until(qapp, lambda: widget.task is None and notices)
    assert len(widget.viewer.layers) == 1
    assert len(notices) == 1
    assert notices[0].severity == "error"
    assert "\n" not in notices[0].message
    assert "in_channels" in notices[0].message or "missing" in notices[0].message


def test_the_sample_preselects_its_config(qapp, tmp_path):
    from napari.components import ViewerModel

    from densepred.interfaces.napari_plugin.sample import CONFIG_KEY

    viewer = ViewerModel()
    made = PredictWidget(viewer)
    raw = np.random.default_rng(1).random((4, 8, 8), np.float32)
    viewer.add_image(raw, name="raw", metadata={CONFIG_KEY: str(tmp_path / "c.toml")})
    made.image.value = viewer.layers["raw"]
    assert str(made.config.value) == str(tmp_path / "c.toml")
    made.close()
