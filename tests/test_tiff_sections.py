"""A folder of 2D TIFF files, one per section (``io/tiff_sections.py``): read in natural order as
the stack of its files, whatever each file's compression and strips, and predicted as the same
volume given whole; the mistakes a folder can hold are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from densepred.interfaces.cli import main
from densepred.io import ArraySpec, input_stamp, open_array, tiff_chunks, tiff_sections
from densepred.io.arrays import input_placement
from tests.conftest import make_config
from tests.test_reliability_files import one_error_line

LAYOUTS = [{}, {"compression": "zlib", "rowsperstrip": 7}, {"compression": "lzw"}, {"tile": (16, 32)},
           {"compression": "zstd", "rowsperstrip": 10**6}]


@pytest.fixture
def volume():
    return np.random.default_rng(3).integers(0, 65535, (12, 45, 67), dtype=np.uint16)


def write_sections(folder, volume, shift=0, **options):
    """Section ``z`` as ``z<z>.tif`` (no zero padding: z10 sorts after z9 only by number), each
    with another layout (the first one's ``LAYOUTS[shift]``); a macOS resource file and a text
    file beside them."""
    folder.mkdir()
    for z, section in enumerate(volume):
        tifffile.imwrite(folder / f"z{z}.tif", section, **LAYOUTS[(z + shift) % len(LAYOUTS)], **options)
    (folder / "._z1.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "notes.txt").write_text("acquired 2026-12-01")


@pytest.mark.parametrize("shift", [0, 1])  # an uncompressed first section: memory maps; else through the cache
def test_a_folder_of_sections_reads_as_their_stack_in_natural_order(tmp_path, volume, monkeypatch, shift):
    monkeypatch.setattr(tiff_sections, "OPEN_FILES", 3)  # files closed and opened again as boxes move on
    monkeypatch.setattr(tiff_chunks, "CACHE_BYTES", 30_000)
    write_sections(tmp_path / "sections", volume, shift)
    array = open_array(str(tmp_path / "sections"))
    assert isinstance(array, tiff_chunks.TiffChunks) == bool(shift)
    assert array.shape == volume.shape
    rng = np.random.default_rng(4)
    for _ in range(30):
        start = [int(rng.integers(0, n)) for n in volume.shape]
        box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(start, volume.shape, strict=True))
        np.testing.assert_array_equal(array[box], volume[box])
    np.testing.assert_array_equal(array[5, 3:40:4], volume[5, 3:40:4])
    np.testing.assert_array_equal(np.asarray(array), volume)
    pattern = open_array(str(tmp_path / "sections" / "z1*.tif"))  # z1, z10, z11
    np.testing.assert_array_equal(np.asarray(pattern), volume[[1, 10, 11]])


def test_a_folder_of_sections_predicts_as_the_same_volume_given_whole(tmp_path, volume):
    config = make_config(tmp_path)
    write_sections(tmp_path / "sections", volume)
    np.save(tmp_path / "whole.npy", volume)
    for source, output in (("sections", "a.zarr"), ("whole.npy", "b.zarr")):
        assert main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output),
                     "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "b.zarr" / "0")[:])
    assert json.loads((tmp_path / "a.zarr.densepred" / "run.json").read_text())["complete"]


def test_a_section_unlike_the_first_is_named_in_one_line(tmp_path, volume, capsys):
    config = make_config(tmp_path)
    write_sections(tmp_path / "sections", volume)
    tifffile.imwrite(tmp_path / "sections" / "z7.tif", volume[7, :, :60])
    code = main(["predict", str(config), "--input", str(tmp_path / "sections"), "--output", str(tmp_path / "p.zarr"),
                 "--quiet"])
    one_error_line(capsys, code, "z7.tif is a section of shape [45, 60] uint16, but z0.tif, the first section")


def test_mistakes_with_a_folder_of_sections_are_one_line(tmp_path, volume, capsys):
    config = make_config(tmp_path)
    write_sections(tmp_path / "sections", volume)
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    (tmp_path / "stacks").mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / "stacks" / name, volume[:3], photometric="minisblack")
    cases = {("sections/q*.tif", "o1.zarr"): "no TIFF file matches",
             ("stack.tif", "sections"): "is a folder of TIFF sections, which densepred reads but does not write",
             ("stacks", "o2.zarr"): "is not one 2D section (its axes are QYX)"}
    for (source, output), message in cases.items():
        code = main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output),
                     "--quiet"])
        one_error_line(capsys, code, message)
    (tmp_path / "stacks" / "b.tif").unlink()  # a folder of one stack is that stack
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "stacks"))), volume[:3])


def test_sections_are_placed_by_a_calibration_that_names_their_depth(tmp_path, volume):
    calibrated = {"imagej": True, "resolution": (1 / 0.004, 1 / 0.004), "metadata": {"unit": "micron", "spacing": 0.03}}
    write_sections(tmp_path / "deep", volume, **calibrated)
    placement = input_placement(ArraySpec.parse(str(tmp_path / "deep")))
    assert placement.unit == "micrometer"
    np.testing.assert_allclose(placement.voxel_size, (0.03, 0.004, 0.004))
    flat = {"imagej": True, "resolution": (1 / 0.004, 1 / 0.004), "metadata": {"unit": "micron"}}
    write_sections(tmp_path / "flat", volume, **flat)
    assert input_placement(ArraySpec.parse(str(tmp_path / "flat"))) is None  # a depth of 1 would be made up


def test_a_changed_section_changes_the_inputs_stamp_and_other_files_do_not(tmp_path, volume):
    write_sections(tmp_path / "sections", volume)
    spec = ArraySpec.parse(str(tmp_path / "sections"))
    before = input_stamp(spec)
    (tmp_path / "sections" / "thumbnail.png").write_bytes(b"\x89PNG")
    assert input_stamp(spec) == before
    tifffile.imwrite(tmp_path / "sections" / "z4.tif", volume[4] // 2)
    assert input_stamp(spec) != before


def test_folders_and_files_named_with_pattern_characters_are_names(tmp_path, volume):
    """Acquisition folders named ``run[2] 10?30``, stacks named ``stack[1].tif``: a pattern is
    only a file name with ``*``, ``?`` or ``[`` that no file has."""
    folder = tmp_path / "run[2] 10?30"
    write_sections(folder, volume)
    tifffile.imwrite(tmp_path / "stack[1].tif", volume)
    for spec in (folder, folder / "z*.tif", tmp_path / "stack[1].tif"):
        np.testing.assert_array_equal(np.asarray(open_array(str(spec))), volume)
    np.testing.assert_array_equal(np.asarray(open_array(str(folder / "z?.tif"))), volume[:10])
    assert not ArraySpec.output(str(folder / "o.tif")).sections  # an output beside them, not a pattern
    config = make_config(tmp_path)
    assert main(["predict", str(config), "--input", str(folder / "z*.tif"), "--output", str(folder / "o.tif"),
                 "--quiet"]) == 0
