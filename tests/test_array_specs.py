"""Array specs as other tools write them: a path that goes on inside a zarr store, an N5
container or an HDF5 file (``em.zarr/recon-1/em/s0``, ``stack.h5/exported_data``), and zarr
stores whose folder is not named ``.zarr``. Each names the same array, axes and placement as
the ``file:path`` form."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.io import ArraySpec, open_array
from densepred.io.arrays import input_placement
from tests.conftest import make_config
from tests.test_n5_inputs import write_n5

OME = {"ome": {"version": "0.5", "multiscales": [{
    "axes": [{"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "nanometer"},
             {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
    "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 40, 4, 4]}]}]}]}}


@pytest.fixture
def image():
    return (np.random.default_rng(7).random((2, 9, 23, 17)) * 255).astype(np.uint8)


def ome_image(folder, image):
    """An OME-Zarr image (channels first) inside a store, as OpenOrganelle nests them."""
    root = zarr.open_group(folder, mode="w")
    group = root.create_group("recon-1/em")
    group.attrs.update(OME)
    group.create_array("s0", shape=image.shape, chunks=(1, 5, 8, 8), dtype=image.dtype,
                       dimension_names=["c", "z", "y", "x"])[:] = image


@pytest.mark.parametrize("name", ["em.zarr", "em"])
def test_a_level_named_by_its_folder_path_is_the_level_with_its_axes_and_placement(tmp_path, image, name):
    """``em.zarr/recon-1/em/s0`` and, for a store whose folder does not say zarr, ``em/recon-1/em/s0``."""
    ome_image(tmp_path / name, image)
    spec = ArraySpec.parse(str(tmp_path / name / "recon-1" / "em" / "s0"))
    assert (spec.path, spec.key) == (tmp_path / name, "recon-1/em/s0")
    opened = open_array(spec)
    assert opened.shape == image.shape  # the channel axis first, as the group's axes say
    np.testing.assert_array_equal(np.asarray(opened[:]), image)
    placement = input_placement(spec)
    assert placement is not None
    assert tuple(placement.voxel_size) == (40, 4, 4)


def test_an_hdf5_dataset_and_an_n5_dataset_named_by_a_path_inside_the_file(tmp_path, image):
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["volumes/raw"] = image[0]
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "stack.h5/volumes/raw"))[:]), image[0])
    write_n5(tmp_path / "c.n5" / "em" / "s0", image[0], (4, 8, 8))
    (tmp_path / "c.n5" / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    spec = ArraySpec.parse(str(tmp_path / "c.n5/em/s0"))
    assert (spec.path, spec.key) == (tmp_path / "c.n5", "em/s0")
    np.testing.assert_array_equal(np.asarray(open_array(spec)[:]), image[0])


def test_a_file_inside_a_folder_named_like_a_store_is_that_file(tmp_path, image):
    (tmp_path / "results.zarr").mkdir()
    np.save(tmp_path / "results.zarr" / "v.npy", image[0])
    spec = ArraySpec.parse(str(tmp_path / "results.zarr" / "v.npy"))
    assert (spec.path, spec.key, spec.kind) == (tmp_path / "results.zarr" / "v.npy", None, "npy")


def test_a_plain_array_in_a_folder_without_a_suffix_and_in_a_group_of_zarr_2(tmp_path, image):
    zarr.create_array(tmp_path / "raw", shape=image[0].shape, chunks=(4, 8, 8), dtype=image.dtype)[:] = image[0]
    group = zarr.open_group(tmp_path / "grp", mode="w", zarr_format=2)
    group.create_array("raw", shape=image[0].shape, chunks=(4, 8, 8), dtype=image.dtype)[:] = image[0]
    assert ArraySpec.parse(str(tmp_path / "raw")).kind == "zarr"
    spec = ArraySpec.parse(str(tmp_path / "grp" / "raw"))
    assert (spec.path, spec.key) == (tmp_path / "grp", "raw")
    for text in (tmp_path / "raw", tmp_path / "grp" / "raw"):
        np.testing.assert_array_equal(np.asarray(open_array(str(text))[:]), image[0])


def test_predict_reads_and_writes_paths_inside_stores_as_their_colon_forms(tmp_path, image):
    config = make_config(tmp_path)
    zarr.create_array(tmp_path / "in.zarr" / "raw", shape=image[0].shape, chunks=(4, 8, 8), dtype=image.dtype)
    zarr.open_array(tmp_path / "in.zarr" / "raw", mode="r+")[:] = image[0]
    for output, source in (("slash.zarr/pred", "in.zarr/raw"), ("colon.zarr:pred", "in.zarr:raw")):
        assert main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output),
                     "--quiet"]) == 0
    assert (tmp_path / "slash.zarr.pred.densepred" / "run.json").exists()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "slash.zarr" / "pred" / "0")[:],
                                  zarr.open_array(tmp_path / "colon.zarr" / "pred" / "0")[:])


def bioformats2raw(folder, image, series=1):
    """bioformats2raw's layout (OME-Zarr 0.4, zarr 2): the image in group ``0``, t, c, z, y, x."""
    root = zarr.open_group(folder, mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx")]
    for n in range(series):
        group = root.create_group(str(n))
        scale = {"type": "scale", "scale": [1, 1, 0.5, 0.1, 0.1]}
        group.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                       "datasets": [{"path": "0", "coordinateTransformations": [scale]}]}]
        group.create_array("0", shape=(1, *image.shape), chunks=(1, 1, 5, 8, 8), dtype=image.dtype)[:] = image[None]
    root.create_group("OME").attrs["series"] = [str(n) for n in range(series)]


def test_a_bioformats2raw_folder_of_one_image_is_that_image(tmp_path, image):
    bioformats2raw(tmp_path / "cells.ome.zarr", image)
    opened = open_array(str(tmp_path / "cells.ome.zarr"))
    assert opened.shape == image.shape
    np.testing.assert_array_equal(np.asarray(opened[:]), image)
    assert tuple(input_placement(ArraySpec.parse(str(tmp_path / "cells.ome.zarr"))).voxel_size) == (0.5, 0.1, 0.1)


def test_a_bioformats2raw_folder_of_several_images_and_a_group_name_what_is_in_them(tmp_path, image):
    bioformats2raw(tmp_path / "plate.ome.zarr", image, series=3)
    with pytest.raises(DensePredError, match=r"holds 3 images \(bioformats2raw layout\): name one as "
                       r".*plate.ome.zarr:N, e\.g\. .*plate\.ome\.zarr:0 \(images: 0, 1, 2\)"):
        open_array(str(tmp_path / "plate.ome.zarr"))
    ome_image(tmp_path / "em.zarr", image)
    with pytest.raises(DensePredError, match=r"em.zarr:recon-1 is a zarr group; name an array or image in it as "
                       r".*em.zarr:recon-1/PATH \(there: em\)"):
        open_array(str(tmp_path / "em.zarr" / "recon-1"))


PARTS = ["data", "em.zarr", "cells.n5", "stack.h5", "s0", "recon-1", "v.npy", "z*.tif", "..", ".", "", "x y", "a:b"]


@settings(max_examples=120, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PARTS), min_size=1, max_size=6))
def test_any_path_is_a_spec_or_one_error_and_a_path_inside_a_container_is_its_colon_form(parts):
    text = "/".join(parts)
    try:
        spec = ArraySpec.parse(text)
    except DensePredError as exc:
        error = str(exc)
    else:
        error = None
    if error is not None:
        assert "\n" not in error
        return
    assert spec.key is None or not any(p in ("", ".", "..") for p in spec.key.split("/"))
    parts = [p for i, p in enumerate(parts) if p not in ("", ".") or i == 0]  # as a path reads them
    containers = [i for i, p in enumerate(parts[:-1]) if p.endswith((".zarr", ".n5", ".h5"))]
    if containers and not parts[-1].endswith((".npy", ".tif", ".zarr", ".n5", ".h5")) and ":" not in text and \
            ".." not in parts[containers[-1]:]:
        at = containers[-1]
        colon = ArraySpec.parse("/".join(parts[:at + 1]) + ":" + "/".join(parts[at + 1:]))
        assert (spec.path, spec.key) == (colon.path, colon.key)
