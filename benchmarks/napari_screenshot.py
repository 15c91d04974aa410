"""A screenshot of an OME-Zarr output in napari, opened the way users open it (napari-ome-zarr).

Runs in an environment with napari and napari-ome-zarr (not the project's test environment),
under Xvfb on a machine without a display:

    python -m venv /tmp/napari-venv && /tmp/napari-venv/bin/pip install "napari[pyqt5]" napari-ome-zarr
    xvfb-run -s "-screen 0 1400x1000x24" /tmp/napari-venv/bin/python benchmarks/napari_screenshot.py \\
        OUTPUT.zarr docs/napari.png [--raw INPUT.zarr] [--ndisplay 3]

It prints the layers napari made (their names, number of pyramid levels, scale and
translate), so the screenshot's claims can be checked in text too.
"""

from __future__ import annotations

import argparse

import napari


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the OME-Zarr prediction")
    parser.add_argument("png", help="where to save the screenshot")
    parser.add_argument("--raw", help="the raw image to show under the prediction: an OME-Zarr, or file.h5:dataset")
    parser.add_argument("--colormap", default="magma", help="colormap of the prediction (default: magma)")
    parser.add_argument("--ndisplay", type=int, default=2, choices=(2, 3))
    args = parser.parse_args()
    viewer = napari.Viewer(show=True)
    if args.raw and ".h5:" in args.raw:
        import h5py

        path, key = args.raw.split(".h5:")
        with h5py.File(path + ".h5", "r") as f:
            viewer.add_image(f[key][...], name="raw", colormap="gray")
    elif args.raw:
        viewer.open(args.raw, plugin="napari-ome-zarr", name="raw", colormap="gray")
    layers = viewer.open(args.output, plugin="napari-ome-zarr")
    if args.raw and ".h5:" in args.raw:  # a plain array has no physical scale: give it the prediction's
        viewer.layers["raw"].scale = layers[0].scale
    for layer in layers:
        levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
        print(f"{type(layer).__name__} {layer.name!r}: {levels} level(s), scale {list(layer.scale)}, "
              f"translate {list(layer.translate)}")
        if args.raw and hasattr(layer, "colormap"):
            layer.blending, layer.colormap, layer.opacity = "additive", args.colormap, 0.7
    viewer.dims.ndisplay = args.ndisplay
    viewer.reset_view()
    if args.ndisplay == 2:  # the middle section
        low, high, _ = viewer.dims.range[0]
        viewer.dims.set_point(0, (low + high) / 2)
    _settle(seconds=8.0)  # napari loads multiscale chunks asynchronously
    viewer.screenshot(args.png, canvas_only=False, flash=False)
    viewer.close()


def _settle(seconds: float) -> None:
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.05)


if __name__ == "__main__":
    main()
