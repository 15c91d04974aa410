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
    parser.add_argument("--raw", help="the raw OME-Zarr (or zarr) image to show under the prediction")
    parser.add_argument("--ndisplay", type=int, default=2, choices=(2, 3))
    args = parser.parse_args()
    viewer = napari.Viewer(show=True)
    if args.raw:
        viewer.open(args.raw, plugin="napari-ome-zarr", name="raw", colormap="gray")
    layers = viewer.open(args.output, plugin="napari-ome-zarr")
    for layer in layers:
        levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
        print(f"{type(layer).__name__} {layer.name!r}: {levels} level(s), scale {list(layer.scale)}, "
              f"translate {list(layer.translate)}")
        if hasattr(layer, "blending"):
            layer.blending = "additive"
    viewer.dims.ndisplay = args.ndisplay
    viewer.reset_view()
    viewer.screenshot(args.png, canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main()
