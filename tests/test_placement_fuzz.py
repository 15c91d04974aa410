"""Where an input says its voxels lie (OME-Zarr transforms, N5 and funlib attributes, TIFF
calibrations), fuzzed:
any metadata gives a placement of positive, finite voxel sizes and a finite position, or none;
never an exception, so a file with odd metadata is still predicted (at voxel size 1)."""

from __future__ import annotations

import json
import math

from hypothesis import example, given, seed, settings
from hypothesis import strategies as st

from densepred.io.n5 import n5_placement
from densepred.io.ome_zarr import attribute_placement, ome_placement
from densepred.io.tiff_placement import imagej_placement, ome_tiff_placement

NUMBER = st.one_of(st.integers(-5, 50), st.floats(allow_nan=True, allow_infinity=True), st.just(0))
ANY = st.one_of(st.none(), st.booleans(), NUMBER, st.text(max_size=4),
                st.sampled_from(["nm", "um", "\u00b5m", "parsec", "z", "y", "x", "c"]))
LIST = st.lists(st.one_of(NUMBER, ANY), max_size=5)
SIZES = st.lists(st.floats(0.1, 100), max_size=5)  # plausible ones too, so the paths past the checks are tried
NAMES = st.lists(st.sampled_from(["z", "y", "x", "c", "t"]), max_size=5)
VALUE = st.one_of(ANY, LIST, SIZES,
                  st.dictionaries(st.sampled_from(["unit", "dimensions"]), st.one_of(ANY, LIST), max_size=2))
TRANSFORM = st.fixed_dictionaries({"type": st.sampled_from(["scale", "translation", "affine", 3])},
                                  optional={"scale": VALUE, "translation": VALUE})
AXIS = st.fixed_dictionaries({}, optional={"name": ANY, "type": st.sampled_from(["space", "time", "channel", 1]),
                                           "unit": ANY})
MULTISCALE = st.fixed_dictionaries({}, optional={
    "axes": st.one_of(st.lists(AXIS, max_size=5), ANY),
    "datasets": st.lists(st.fixed_dictionaries({"path": st.sampled_from(["0", "s0", 0])}, optional={
        "coordinateTransformations": st.one_of(st.lists(TRANSFORM, max_size=3), ANY)}), max_size=2),
    "coordinateTransformations": st.one_of(st.lists(TRANSFORM, max_size=2), ANY)})
ATTRIBUTES = st.dictionaries(st.sampled_from(["voxel_size", "resolution", "offset", "units", "pixelResolution",
                                              "element_size_um", "downsamplingFactors", "axes", "transform"]),
                             st.one_of(VALUE, st.fixed_dictionaries({}, optional={
                                 "axes": st.one_of(NAMES, LIST), "scale": st.one_of(SIZES, LIST),
                                 "translate": st.one_of(SIZES, LIST), "units": LIST,
                                 "ordering": st.sampled_from(["C", "F", 0])})), max_size=5)


def sound(placement, count=None):
    if placement is None:
        return True
    return ((count is None or len(placement.voxel_size) == count) and
            len(placement.voxel_size) == len(placement.translation) and
            all(math.isfinite(v) and v > 0 for v in placement.voxel_size) and
            all(math.isfinite(t) for t in placement.translation))


@seed(20261205)
@settings(max_examples=150, deadline=None)
@given(st.one_of(st.fixed_dictionaries({"multiscales": st.lists(MULTISCALE, max_size=1)}),
                 st.fixed_dictionaries({"ome": st.fixed_dictionaries({
                     "multiscales": st.lists(MULTISCALE, max_size=1)})}), ATTRIBUTES))
def test_any_ome_or_array_metadata_places_soundly_or_not_at_all(attributes):
    assert sound(ome_placement(attributes, "0"))
    assert sound(ome_placement(attributes, "s0"))
    assert sound(attribute_placement(attributes))


@seed(20261205)
@settings(max_examples=60, deadline=None)
@given(ATTRIBUTES, ATTRIBUTES, st.integers(1, 3))
@example({"transform": {"axes": ["z"], "scale": [2.0], "translate": [1.0]}}, {}, 3)  # found: fewer axes than asked
@example({"transform": {"axes": [], "scale": [], "translate": []}}, {}, 1)  # found: no axes at all
@example({"transform": {"axes": ["z"], "scale": [1.0], "translate": [1.0], "units": []}}, {}, 1)  # found: no units
@example({"transform": {"axes": ["z"], "scale": [], "translate": []}}, {}, 1)  # found: fewer values than axes
def test_any_n5_attributes_place_soundly_or_not_at_all(tmp_path_factory, own, parent, spatial):
    folder = tmp_path_factory.mktemp("n5") / "s0"
    folder.mkdir()
    (folder.parent / "attributes.json").write_text(json.dumps(parent, allow_nan=True))
    (folder / "attributes.json").write_text(json.dumps({**own, "dimensions": [5] * 3}, allow_nan=True))
    assert sound(n5_placement(folder, spatial), spatial)


RESOLUTION = st.one_of(ANY, st.tuples(NUMBER, NUMBER))
SPATIAL = st.sampled_from([["Y", "X"], ["Z", "Y", "X"], ["X"], ["Z", "Y"]])
OME_VALUE = st.one_of(NUMBER.map(str), st.sampled_from(["nm", "\u00b5m", "\u00c5", "pixel", "inch", "", "<"]))


@seed(20261206)
@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.sampled_from(["unit", "spacing", "xorigin", "yorigin", "zorigin"]),
                       st.one_of(ANY, st.sampled_from(["micron", "\\u00B5m", "nm", "pixel"])), max_size=5),
       RESOLUTION, RESOLUTION, SPATIAL,
       st.dictionaries(st.sampled_from([f"PhysicalSize{a}{u}" for a in "XYZ" for u in ("", "Unit")]), OME_VALUE,
                       max_size=6))
def test_any_tiff_calibration_places_soundly_or_not_at_all(imagej, y_resolution, x_resolution, spatial, ome):
    assert sound(imagej_placement(imagej, y_resolution, x_resolution, spatial), len(spatial))
    pixels = " ".join(f'{k}="{v}"' for k, v in ome.items() if v != "<")
    assert sound(ome_tiff_placement(f"<OME><Image><Pixels {pixels}/></Image></OME>", spatial), len(spatial))
