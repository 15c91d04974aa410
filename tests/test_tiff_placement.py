"""A TIFF's calibration as its placement (ImageJ's and OME's, nothing from other TIFFs), and a
TIFF output written as an ImageJ hyperstack with the input's calibration."""

import numpy as np
import pytest
import tifffile

from densepred.io.arrays import ArraySpec, input_placement
from densepred.io.tiff_placement import imagej_placement, ome_tiff_placement, unit_name


@pytest.fixture
def stack():
    return np.random.default_rng(3).integers(0, 255, (3, 2, 5, 7), dtype=np.uint8)  # z, c, y, x


def placed(path):
    return input_placement(ArraySpec.parse(str(path)))


def test_a_fiji_hyperstack_is_placed_on_its_spatial_axes_only(stack, tmp_path):
    tifffile.imwrite(tmp_path / "h.tif", stack, imagej=True, resolution=(1 / 0.3, 1 / 0.2),
                     metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "\\u00B5m", "xorigin": 4})
    placement = placed(tmp_path / "h.tif")
    assert placement.voxel_size == pytest.approx((1.5, 0.2, 0.3))
    assert placement.translation == pytest.approx((0, 0, -1.2))
    assert placement.unit == "micrometer"


def test_a_fiji_stack_without_spacing_has_imagejs_depth_of_one_unit(stack, tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", stack[:, 0], imagej=True, resolution=(0.5, 0.5),
                     metadata={"axes": "ZYX", "unit": "micron"})
    assert placed(tmp_path / "s.tif").voxel_size == pytest.approx((1.0, 2.0, 2.0))


@pytest.mark.parametrize("metadata", [{"axes": "ZYX"}, {"axes": "ZYX", "unit": "pixel"},
                                      {"axes": "ZYX", "unit": "nm", "spacing": 0}])
def test_an_uncalibrated_fiji_stack_is_not_placed(stack, tmp_path, metadata):
    tifffile.imwrite(tmp_path / "u.tif", stack[:, 0], imagej=True, resolution=(0.5, 0.5), metadata=metadata)
    assert placed(tmp_path / "u.tif") is None


def test_a_plain_tiffs_dots_per_inch_are_not_a_voxel_size(stack, tmp_path):
    tifffile.imwrite(tmp_path / "p.tif", stack[:, 0], resolution=(72, 72), resolutionunit="INCH",
                     photometric="minisblack")
    assert placed(tmp_path / "p.tif") is None


def test_an_ome_tiff_stack_without_a_depth_is_not_placed_but_an_image_is(stack, tmp_path):
    tifffile.imwrite(tmp_path / "z.ome.tif", stack[:, 0], metadata={"axes": "ZYX", "PhysicalSizeX": 0.1,
                                                                    "PhysicalSizeY": 0.1})
    tifffile.imwrite(tmp_path / "i.ome.tif", stack[0, 0], metadata={"axes": "YX", "PhysicalSizeX": 0.1,
                                                                    "PhysicalSizeY": 0.12})
    assert placed(tmp_path / "z.ome.tif") is None
    image = placed(tmp_path / "i.ome.tif")
    assert (image.voxel_size, image.unit) == (pytest.approx((0.12, 0.1)), "micrometer")


def test_ome_units_are_taken_to_the_unit_of_x():
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels PhysicalSizeX="5" '
           'PhysicalSizeXUnit="nm" PhysicalSizeY="0.005" PhysicalSizeZ="3" PhysicalSizeZUnit="Å"/></Image></OME>')
    placement = ome_tiff_placement(xml, ["Z", "Y", "X"])
    assert placement.voxel_size == pytest.approx((0.3, 5, 5))
    assert placement.unit == "nanometer"
    assert ome_tiff_placement(xml.replace('"nm"', '"pixel"'), ["Y", "X"]) is None
    assert ome_tiff_placement("<OME", ["Y", "X"]) is None


def test_imagej_metadata_that_is_not_numbers_places_nothing():
    assert imagej_placement({"unit": "nm", "spacing": "a lot"}, (1, 4), (1, 4), ["Z", "Y", "X"]) is None
    assert imagej_placement({"unit": "nm"}, (0, 1), (1, 4), ["Y", "X"]) is None
    assert [unit_name(u) for u in ("micron", "\u00b5m", "\u03bcm", "nm", "\u00c5", "pixel", "", None)] == \
        ["micrometer", "micrometer", "micrometer", "nanometer", "angstrom", None, None, None]


@pytest.mark.parametrize("classes", [None, "1"])
def test_a_tiff_output_is_a_calibrated_hyperstack_and_resumes_through_its_view(tmp_path, classes):
    """Classes as an ImageJ hyperstack's channels (z first in the file) with the input's voxel
    size, unit and origin; a resume writes through the same (C, Z, Y, X) view. One class keeps
    tifffile's own axes (ImageJ leaves out a channel axis of one)."""
    import json

    from densepred.interfaces.cli import main
    from tests.conftest import make_config, mark_interrupted

    config = make_config(tmp_path)
    volume = np.random.default_rng(4).random((13, 41, 37), dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", volume, imagej=True, resolution=(0.25, 0.25),
                     metadata={"axes": "ZYX", "spacing": 40, "unit": "nm", "xorigin": -3})
    extra = ["--classes", classes] if classes else []
    for output in ("o.npy", "o.tif"):
        assert main(["predict", str(config), "--input", str(tmp_path / "in.tif"), "--output", str(tmp_path / output),
                     "--tile", "7,19,17", "--mirror", "--quiet", *extra]) == 0
    expected = np.load(tmp_path / "o.npy")
    with tifffile.TiffFile(tmp_path / "o.tif") as tiff:
        assert (tiff.is_imagej, tiff.series[0].axes) == ((True, "ZCYX") if classes is None else (False, "CZYX"))
    from densepred.io import open_array

    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "o.tif"))), expected)
    if classes is None:
        placement = placed(tmp_path / "o.tif")
        assert (placement.voxel_size, placement.translation, placement.unit) == (
            pytest.approx((40, 4, 4)), pytest.approx((0, 0, 12)), "nanometer")
    mark_interrupted(str(tmp_path / "o.tif"))  # nothing done: every tile written again through the reopened file
    (tmp_path / "o.tif.densepred" / "done.log").write_text("")
    array = tifffile.memmap(tmp_path / "o.tif", mode="r+")
    array[:] = 0
    array.flush()
    del array
    assert main(["predict", str(config), "--input", str(tmp_path / "in.tif"), "--output", str(tmp_path / "o.tif"),
                 "--tile", "7,19,17", "--mirror", "--quiet", "--resume", *extra]) == 0
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "o.tif"))), expected)
    assert json.loads((tmp_path / "o.tif.densepred" / "run.json").read_text())["complete"]


@pytest.mark.parametrize(("shape", "channel_axis", "dtype", "imagej"), [
    ((2, 1, 1, 1), True, "float32", False), ((2, 1, 1), True, "float32", False),
    ((3, 1, 5, 6), True, "uint8", False), ((1, 4, 5, 6), True, "float32", False),
    ((4, 5, 6), False, "uint8", True), ((2, 3, 5, 6), True, "float32", True), ((3, 5, 6), True, "uint16", True),
    ((3, 4, 5), True, "float16", False)])
def test_a_tiff_output_reads_back_in_the_shape_it_was_written(tmp_path, shape, channel_axis, dtype, imagej):
    """ImageJ leaves out axes of one element, so those outputs (found by the differential
    campaign: 1 x 1 images, single sections) keep tifffile's axes; float16 (no ImageJ type) too."""
    from densepred.io import open_array
    from densepred.io.tiff_output import create_tiff

    values = (np.random.default_rng(5).random(shape) * 200).astype(dtype)
    array = create_tiff(tmp_path / "o.tif", shape, np.dtype(dtype), channel_axis, None)
    array[...] = values
    array.flush()
    del array
    with tifffile.TiffFile(tmp_path / "o.tif") as tiff:
        assert tiff.is_imagej == imagej
    read = open_array(str(tmp_path / "o.tif"))
    assert read.shape == shape
    np.testing.assert_array_equal(np.asarray(read), values)


def test_a_tiff_output_over_4_gb_is_a_calibrated_ome_tiff_and_resumes(tmp_path, monkeypatch):
    """ImageJ has no BigTIFF, so a large output was an uncalibrated tifffile stack; it is now an
    OME-TIFF with the input's voxel size and unit (the limit lowered to make one here)."""
    from densepred.interfaces.cli import main
    from densepred.io import open_array, tiff_output
    from tests.conftest import make_config, mark_interrupted

    config = make_config(tmp_path)
    volume = np.random.default_rng(8).random((11, 29, 31), dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", volume, imagej=True, resolution=(0.25, 0.25),
                     metadata={"axes": "ZYX", "spacing": 40, "unit": "nm"})

    def predict(output, *extra):
        return main(["predict", str(config), "--input", str(tmp_path / "in.tif"), "--output", str(tmp_path / output),
                     "--tile", "7,19,17", "--mirror", "--quiet", *extra])

    assert predict("small.tif") == 0
    monkeypatch.setattr(tiff_output, "TIFF_LIMIT", 1000)
    assert predict("large.tif") == 0
    with tifffile.TiffFile(tmp_path / "large.tif") as tiff:
        assert (tiff.is_bigtiff, tiff.is_ome, tiff.series[0].axes) == (True, True, "CZYX")
    placement = placed(tmp_path / "large.tif")
    assert (placement.voxel_size, placement.unit) == (pytest.approx((40, 4, 4)), "nanometer")
    expected = np.asarray(open_array(str(tmp_path / "small.tif")))
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "large.tif"))), expected)
    mark_interrupted(str(tmp_path / "large.tif"))
    (tmp_path / "large.tif.densepred" / "done.log").write_text("")
    array = tifffile.memmap(tmp_path / "large.tif", mode="r+")
    array[:] = 0
    array.flush()
    del array
    assert predict("large.tif", "--resume") == 0
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "large.tif"))), expected)
