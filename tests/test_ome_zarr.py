"""Viewer-ready OME-Zarr outputs: sharded levels, a pyramid, physical metadata, labels, validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from densepred.geometry import inner_chunks, pyramid
from densepred.interfaces.cli import main
from densepred.io.arrays import open_array
from densepred.io.pyramid import downsample_mean, downsample_mode
from tests.test_predict_files import TILE, chunk_files


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(5).random((15, 73, 61), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return data


def predict(config, tmp_path, output, *extra, input_spec=None):
    return main(["predict", str(config), "--input", input_spec or str(tmp_path / "in.npy"), "--output", output,
                 "--tile", TILE, "--mode", "mfp", "--quiet", *extra])


def test_pyramid_levels_halve_fine_axes_first_and_stop_at_the_viewer_size():
    levels = pyramid((40, 2048, 2048), voxel_size=(30, 8, 8))
    assert [lv.shape for lv in levels] == [(40, 2048, 2048), (40, 1024, 1024), (40, 512, 512), (20, 256, 256)]
    assert [lv.factor for lv in levels] == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)]
    assert len(pyramid((10, 300, 300), levels=1)) == 1
    assert len(pyramid((10, 20, 20), levels=4)) == 4
    assert inner_chunks((112, 12, 97), 64) == (56, 12, 97)


def test_mean_and_mode_downsampling_match_a_plain_numpy_reference():
    rng = np.random.default_rng(0)
    data = rng.random((2, 5, 7, 6)).astype(np.float32)
    mean = downsample_mean(data, (1, 2, 2))
    padded = np.pad(data, [(0, 0), (0, 0), (0, 1), (0, 0)], mode="edge")
    expected = padded.reshape(2, 5, 4, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    labels = rng.integers(0, 4, size=(6, 6, 6)).astype(np.uint8)
    mode = downsample_mode(labels, (2, 2, 2))
    for index in np.ndindex(mode.shape):
        block = labels[tuple(slice(2 * i, 2 * i + 2) for i in index)].ravel()
        counts = np.bincount(block, minlength=4)
        assert mode[index] == np.flatnonzero(counts == counts.max())[0]


def test_probability_output_is_a_valid_multiscale_image_with_names_scales_and_units(config, volume, tmp_path):
    config.write_text(config.read_text().replace("n_classes = 3", 'n_classes = 3\nclass_names = ["a", "b", "c"]'))
    out = tmp_path / "probs.zarr"
    assert predict(config, tmp_path, str(out), "--levels", "3", "--voxel-size", "30,8,8", "--unit", "nanometer",
                   "--chunks", "4,8,8", "--mirror") == 0
    group = zarr.open_group(out, mode="r")
    Image.from_zarr(group)  # raises unless valid OME-Zarr 0.5
    ome = group.attrs["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["a", "b", "c"]
    axes = ome["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == [None, "nanometer", "nanometer", "nanometer"]
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [
        [1, 30, 8, 8], [1, 30, 16, 16], [1, 30, 32, 32]]
    assert datasets[1]["coordinateTransformations"][1]["translation"] == [0, 0, 4, 4]  # block centres
    level0, level1 = group["0"], group["1"]
    assert level0.chunks == (1, 4, 6, 10)  # divisors of the tile (4, 12, 10) nearest 4, 8, 8
    assert level1.shape == (3, 15, 37, 31)
    np.testing.assert_allclose(level1[...], downsample_mean(level0[...], (1, 2, 2)), rtol=1e-6)
    assert group.attrs["densepred"]["complete"] is True


def test_argmax_output_is_an_image_label_downsampled_by_mode(config, volume, tmp_path):
    out = tmp_path / "labels.zarr"
    assert predict(config, tmp_path, str(out), "--argmax", "--levels", "2") == 0
    group = zarr.open_group(out, mode="r")
    ImageLabel.from_zarr(group)
    assert "image-label" in group.attrs["ome"]
    np.testing.assert_array_equal(group["1"][...], downsample_mode(group["0"][...], (2, 2, 2)))


def test_viewer_dtypes_and_units_are_checked_before_anything_is_written(config, volume, tmp_path, capsys):
    assert predict(config, tmp_path, str(tmp_path / "h.zarr"), "--dtype", "float16") == 2
    assert "neuroglancer reads uint8, uint16, uint32, float32" in capsys.readouterr().err
    assert predict(config, tmp_path, str(tmp_path / "u.zarr"), "--voxel-size", "30,8,8", "--unit", "nm") == 2
    assert "did you mean 'nanometer'" in capsys.readouterr().err
    assert not (tmp_path / "h.zarr").exists()
    assert not (tmp_path / "u.zarr").exists()
    assert predict(config, tmp_path, str(tmp_path / "ok.h5:p"), "--dtype", "float16") == 0  # HDF5 keeps float16


def test_an_ome_zarr_input_gives_its_voxel_size_and_any_level_can_be_read(config, volume, tmp_path):
    source = tmp_path / "probs.zarr"
    assert predict(config, tmp_path, str(source), "--levels", "2", "--voxel-size", "40,4,4", "--unit",
                   "nanometer", "--classes", "1") == 0
    out = tmp_path / "again.zarr"
    assert predict(config, tmp_path, str(out), "--levels", "1", input_spec=f"{source}:1") == 0
    ome = zarr.open_group(out, mode="r").attrs["ome"]
    scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1:] == [40, 8, 8]  # level 1 of the input: y and x halved (z was already coarse)
    assert ome["multiscales"][0]["axes"][1]["unit"] == "nanometer"
    assert open_array(f"{source}:1").shape[1:] == zarr.open_group(source, mode="r")["1"].shape[1:]


def test_killed_during_the_pyramid_then_resumed_is_byte_identical(config, volume, tmp_path, monkeypatch):
    assert predict(config, tmp_path, str(tmp_path / "whole.zarr"), "--levels", "3") == 0
    from densepred.io.outputs import OutputArray

    original = OutputArray.__setitem__
    calls = {"n": 0}

    def failing(self, key, value):  # the third write into a pyramid level, while tiles are written or after
        if self.array is not self.levels[0]:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(5, "Input/output error")
        original(self, key, value)

    monkeypatch.setattr(OutputArray, "__setitem__", failing)
    out = tmp_path / "cut.zarr"
    assert predict(config, tmp_path, str(out), "--levels", "3") == 2
    record = json.loads((tmp_path / "cut.zarr.densepred" / "run.json").read_text())
    assert record["complete"] is False
    monkeypatch.undo()
    assert predict(config, tmp_path, str(out), "--levels", "3", "--resume") == 0
    assert chunk_files(out) == chunk_files(tmp_path / "whole.zarr")
    with pytest.raises(AssertionError):  # a changed pyramid is another output
        assert predict(config, tmp_path, str(out), "--levels", "2", "--resume") == 0


def test_an_output_cut_short_while_its_levels_are_created_names_no_missing_arrays(tmp_path, monkeypatch):
    from densepred.io import outputs
    from densepred.io.arrays import ArraySpec
    def killed(group, layout, dtype):
        group.create_array("0", shape=(2, 8, 8), dtype="uint8")
        raise KeyboardInterrupt  # the process stops before the other levels exist

    monkeypatch.setattr(outputs, "create_levels", killed)
    layout = object()  # not looked at: the levels are cut short before the image's metadata
    with pytest.raises(KeyboardInterrupt):
        outputs.create_output(ArraySpec.parse(str(tmp_path / "o.zarr")), (2, 33, 40), "uint8", (33, 40),
                              attributes={"densepred": {"complete": False}}, layout=layout)
    attributes = zarr.open_group(tmp_path / "o.zarr", mode="r").attrs
    assert attributes["densepred"] == {"complete": False}  # still marked as densepred's
    assert "ome" not in attributes


def test_a_run_killed_while_it_creates_its_output_resumes_to_the_same_bytes(tmp_path, config):
    np.save(tmp_path / "in.npy", np.random.default_rng(8).random((21, 70, 65), dtype=np.float32))
    args = ["predict", str(config), "--input", str(tmp_path / "in.npy"), "--levels", "2", "--dtype", "uint8",
            "--quiet", "--output"]
    killed = ("import os, sys\nfrom densepred.io import outputs\n"
              "def create_levels(group, layout, dtype):\n"
              "    group.create_array('0', shape=(3, 2, 2), dtype='uint8')\n"
              "    os._exit(9)  # as a kill -9: nothing cleaned up\n"
              "outputs.create_levels = create_levels\n"
              "from densepred.interfaces.cli import main\nmain(sys.argv[1:])\n")
    cut = str(tmp_path / "cut.zarr")
    assert subprocess.run([sys.executable, "-c", killed, *args, cut], check=False).returncode == 9
    assert (tmp_path / "cut.zarr.densepred" / "run.json").exists()
    assert zarr.open_group(cut, mode="r").attrs["densepred"] == {"complete": False}  # ours, cut short
    assert main([*args, cut, "--resume"]) == 0
    assert main([*args, str(tmp_path / "whole.zarr")]) == 0
    for level in ("0", "1"):
        np.testing.assert_array_equal(zarr.open_group(cut, mode="r")[level][...],
                                      zarr.open_group(tmp_path / "whole.zarr", mode="r")[level][...])


def ome_input(path, data, scale, translation, outer_scale=None):
    """An OME-Zarr 0.4 image of ``data`` with two levels (the second by striding), placed by a
    scale and translation per level and optionally a scale of the whole multiscale."""
    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("s0", data=data, chunks=(8, 32, 32))
    group.create_array("s1", data=np.ascontiguousarray(data[:, ::2, ::2]), chunks=(8, 32, 32))
    datasets = [{"path": f"s{i}", "coordinateTransformations": [
        {"type": "scale", "scale": [scale[0], scale[1] * 2**i, scale[2] * 2**i]},
        {"type": "translation", "translation": [translation[0], *(t + (2**i - 1) / 2 * s for t, s in
                                                                  zip(translation[1:], scale[1:], strict=True))]}]}
                for i in range(2)]
    multiscale = {"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                  "datasets": datasets}
    if outer_scale:
        multiscale["coordinateTransformations"] = [{"type": "scale", "scale": outer_scale}]
    group.attrs["multiscales"] = [multiscale]


def world(transforms, index):
    scale = transforms[0]["scale"][-3:]
    shift = transforms[1]["translation"][-3:] if len(transforms) > 1 else [0.0] * 3
    return [t + i * s for t, i, s in zip(shift, index, scale, strict=True)]


@pytest.mark.parametrize(("level", "extra", "outer"), [("s0", (), None), ("s1", ("--roi", "2:13,5:30,3:26"), None),
                                                       ("s0", ("--mirror",), [1.0, 2.0, 2.0])])
def test_the_output_lies_where_the_input_lies_in_physical_space(config, volume, tmp_path, level, extra, outer):
    """Each output voxel's physical position is that of the input voxel it is the prediction
    of; an input placed away from the origin (a cutout of a larger volume) places the output
    there too, also where --voxel-size overrides the input's scale (its position kept in voxels)."""
    import densepred

    ome_input(tmp_path / "in.zarr", volume, (40.0, 4.0, 4.0), (4000.0, -80.0, 1200.0), outer)
    spec = f"{tmp_path / 'in.zarr'}:{level}"
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), *extra, input_spec=spec) == 0
    assert predict(config, tmp_path, str(tmp_path / "v.zarr"), *extra, "--voxel-size", "5,1,1",
                   input_spec=spec) == 0
    source = zarr.open_group(tmp_path / "in.zarr", mode="r").attrs["multiscales"][0]
    placed = next(d for d in source["datasets"] if d["path"] == level)["coordinateTransformations"]
    if outer:  # the multiscale's scale applies after the dataset's transforms
        placed = [{"scale": [a * b for a, b in zip(placed[0]["scale"], outer, strict=True)]},
                  {"translation": [a * b for a, b in zip(placed[1]["translation"], outer, strict=True)]}]
    if extra and extra[0] == "--roi":  # the region's voxels are predicted
        start = [int(r.split(":")[0]) for r in extra[1].split(",")]
    else:  # the whole image, or without mirroring, the voxels a window's border away from its faces
        start = [0, 0, 0] if extra else densepred.build_net(densepred.load_config(config)).geometry.offset
    for output, voxel_size in (("o.zarr", None), ("v.zarr", [5.0, 1.0, 1.0])):
        transforms = zarr.open_group(tmp_path / output, mode="r").attrs["ome"]["multiscales"][0]["datasets"][0][
            "coordinateTransformations"]
        assert transforms[0]["scale"][1:] == (voxel_size or placed[0]["scale"])
        for index in ([0, 0, 0], [3, 7, 5]):
            source_voxel = [i + s for i, s in zip(index, start, strict=True)]
            if voxel_size is None:
                assert world(transforms, index) == pytest.approx(world(placed, source_voxel))
            else:  # the input's position in voxels, with the given voxel size
                shift = [t / s * v for t, s, v in zip(placed[1]["translation"], placed[0]["scale"], voxel_size,
                                                      strict=True)]
                assert world(transforms, index) == pytest.approx(
                    [t + i * v for t, i, v in zip(shift, source_voxel, voxel_size, strict=True)])


@pytest.mark.parametrize("kind", ["cremi hdf5", "funlib zarr", "imagej tiff", "ome tiff", "fiji hdf5"])
def test_an_arrays_own_voxel_size_and_offset_place_the_output_and_shape_its_pyramid(config, volume, tmp_path, kind):
    """CREMI's HDF5 files and funlib/daisy's zarr arrays carry ``resolution`` (or ``voxel_size``)
    and ``offset``, z first, in physical units; Fiji's TIFFs their calibration (resolution tags,
    ``spacing``, origin in pixels), OME-TIFFs ``PhysicalSize`` with a unit per axis: the output
    takes them, and its pyramid halves the fine axes first (40 x 4 x 4 nm: y and x, not z)."""
    import h5py
    import tifffile

    import densepred

    offset, unit, voxel = (400, 8, 12), "nanometer", (40, 4, 4)
    if kind == "cremi hdf5":
        with h5py.File(tmp_path / "sample.h5", "w") as f:
            f["volumes/raw"] = volume
            f["volumes/raw"].attrs["resolution"] = np.array([40.0, 4.0, 4.0])
            f["volumes/raw"].attrs["offset"] = np.array([400.0, 8.0, 12.0])
        spec, unit = f"{tmp_path / 'sample.h5'}:volumes/raw", None
    elif kind == "funlib zarr":
        array = zarr.create_array(tmp_path / "raw.zarr", data=volume, chunks=(8, 32, 32), zarr_format=2)
        array.attrs.update({"voxel_size": [40, 4, 4], "offset": [400, 8, 12], "units": ["nm", "nm", "nm"],
                            "axis_names": ["z", "y", "x"]})
        spec = str(tmp_path / "raw.zarr")
    elif kind == "imagej tiff":  # ImageJ's origin is in pixels, from voxel 0 towards negative positions
        spec = str(tmp_path / "fiji.tif")
        tifffile.imwrite(spec, volume, imagej=True, resolution=(0.25, 0.25),
                         metadata={"axes": "ZYX", "spacing": 40, "unit": "nm", "zorigin": -10, "yorigin": -2,
                                   "xorigin": -3})
    elif kind == "fiji hdf5":  # Fiji's HDF5 plugin: element_size_um, z first
        with h5py.File(tmp_path / "fiji.h5", "w") as f:
            f["data"] = volume
            f["data"].attrs["element_size_um"] = np.array([0.04, 0.004, 0.004])
        spec, offset, unit = f"{tmp_path / 'fiji.h5'}:data", (0, 0, 0), "micrometer"
        voxel = (0.04, 0.004, 0.004)
    else:  # z in micrometres, y and x in nanometres
        spec, offset = str(tmp_path / "bio.ome.tif"), (0, 0, 0)
        tifffile.imwrite(spec, volume, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.04, "PhysicalSizeY": 4,
                                                 "PhysicalSizeX": 4, "PhysicalSizeYUnit": "nm",
                                                 "PhysicalSizeXUnit": "nm"})
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--levels", "2", input_spec=spec) == 0
    multiscale = zarr.open_group(tmp_path / "o.zarr", mode="r").attrs["ome"]["multiscales"][0]
    border = densepred.build_net(densepred.load_config(config)).geometry.offset
    level0, level1 = (d["coordinateTransformations"] for d in multiscale["datasets"])
    assert level0[0]["scale"] == pytest.approx([1, *voxel])
    assert level0[1]["translation"][1:] == pytest.approx([o + b * v for o, b, v in zip(offset, border, voxel,
                                                                                       strict=True)])
    assert level1[0]["scale"] == pytest.approx([1, voxel[0], voxel[1] * 2, voxel[2] * 2])
    assert {a.get("unit") for a in multiscale["axes"][1:]} == {unit}


def test_an_hdf5_output_carries_where_its_voxels_lie_as_cremi_attributes(config, volume, tmp_path):
    """An HDF5 output of a placed input (or with --voxel-size) holds ``resolution``, ``offset``
    and ``units`` as CREMI and funlib files do, so densepred and those tools read it placed; an
    input that names no scale leaves the output without them."""
    import h5py

    import densepred
    from densepred.io.arrays import ArraySpec, input_placement

    with h5py.File(tmp_path / "sample.h5", "w") as f:
        f["raw"] = volume
        f["raw"].attrs.update({"resolution": [40.0, 4.0, 4.0], "offset": [400.0, 8.0, 12.0]})
    np.save(tmp_path / "plain.npy", volume)
    border = densepred.build_net(densepred.load_config(config)).geometry.offset
    runs = [("sample.h5:raw", [], (40, 4, 4), [o + b * v for o, b, v in zip((400, 8, 12), border, (40, 4, 4),
                                                                            strict=True)], None),
            ("sample.h5:raw", ["--mirror", "--voxel-size", "30,5,5", "--unit", "nanometer"], (30, 5, 5),
             [300, 10, 15], "nanometer"),
            ("plain.npy", [], None, None, None)]
    for index, (source, extra, size, offset, unit) in enumerate(runs):
        output = f"{tmp_path / 'out.h5'}:pred{index}"
        assert predict(config, tmp_path, output, *extra, input_spec=str(tmp_path / source)) == 0
        placement = input_placement(ArraySpec.parse(output))
        if size is None:
            assert placement is None
            continue
        assert placement.voxel_size == pytest.approx(size)
        assert placement.translation == pytest.approx(offset)
        assert placement.unit == unit


@pytest.mark.parametrize("kind", ["ome c, x, y, z", "dimension names x, y, z"])
def test_an_input_stored_x_first_is_placed_in_the_order_it_is_read(config, volume, tmp_path, kind):
    """webknossos writes its arrays ``c, x, y, z``: densepred reads them as (C, Z, Y, X), and
    their voxel size and position, listed x first, must be put in that order too (the z size
    of 40 nm was taken for x)."""
    stored = np.ascontiguousarray(volume[:, :40, :36].T)  # x, y, z (the values in this order: test_input_axes)
    if kind.startswith("ome"):
        group = zarr.open_group(tmp_path / "wk.zarr", mode="w")
        group.create_array("0", data=stored[None], chunks=(1, 16, 16, 8), dimension_names=["c", "x", "y", "z"])
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{
            "axes": [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "nanometer"}
                                                          for a in "xyz"],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 4, 4, 40]}, {"type": "translation", "translation": [0, 12, 8, 400]}]}]}]}
    else:
        array = zarr.create_array(tmp_path / "wk.zarr", data=stored, chunks=(16, 16, 8),
                                  dimension_names=["x", "y", "z"])
        array.attrs.update({"voxel_size": [4, 4, 40], "offset": [12, 8, 400], "units": ["nm"] * 3})
    assert predict(config, tmp_path, str(tmp_path / "o.zarr"), "--levels", "2", "--mirror",
                   input_spec=str(tmp_path / "wk.zarr")) == 0
    out = zarr.open_group(tmp_path / "o.zarr", mode="r")
    assert out["0"].shape[1:] == (15, 40, 36)
    level0, level1 = (d["coordinateTransformations"] for d in out.attrs["ome"]["multiscales"][0]["datasets"])
    assert level0 == [{"type": "scale", "scale": [1.0, 40.0, 4.0, 4.0]},
                      {"type": "translation", "translation": [0.0, 400.0, 8.0, 12.0]}]
    assert level1[0]["scale"] == [1.0, 40.0, 8.0, 8.0]  # the pyramid halves y and x, not z
