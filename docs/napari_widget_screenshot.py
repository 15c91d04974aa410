"""The README's napari screenshot: the sample EM volume with the predicted membranes over it.

    xvfb-run -a .venv/bin/python docs/napari_widget_screenshot.py [docs/napari_widget.png]     (make screenshot)

Opens a real napari window (on Xvfb when there is no display), loads the densepred sample
(training its net on first use), presses Predict in the dock widget and saves a screenshot of
the whole window once the membrane probabilities are shown.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(path: str = "docs/napari_widget.png") -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from densepred.interfaces.napari_plugin.sample import membranes_sample
    from densepred.interfaces.napari_plugin.widget import PredictWidget

    viewer = napari.Viewer(title="densepred", show=True)
    viewer.window.resize(1400, 820)
    for data, kwargs, layer_type in membranes_sample():
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Dense prediction", area="right")
    widget.classes.value = "1"
    widget.predict.native.click()
    app = QApplication.instance()
    end = time.monotonic() + 600
    while widget.task is not None or len(viewer.layers) < 3:
        if time.monotonic() > end:
            raise SystemExit("the prediction did not finish in 10 min")
        app.processEvents()
        time.sleep(0.02)
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    viewer.layers[-1].opacity = 0.6
    viewer.dims.set_point(0, viewer.layers[0].data.shape[0] // 2 * viewer.layers[0].scale[0])
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(path, canvas_only=False, flash=False)
    print(f"wrote {Path(path).resolve()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
