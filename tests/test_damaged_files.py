"""Damaged files (fault campaign; hypothesis, seeded). An input whose metadata or bytes are
damaged is predicted, or refused in one line; an interrupted run whose output or run record
is damaged resumes to the result of an undamaged run, or is refused in one line. Never a
traceback, never an output left looking finished."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from densepred.interfaces.cli import main
from densepred.io import open_array
from tests.conftest import make_config
from tests.test_n5_inputs import write_n5

IMAGE = np.random.default_rng(5).integers(0, 255, (9, 21, 23), dtype=np.uint8)
JSON_FILES = ("zarr.json", ".zarray", ".zattrs", "attributes.json", "run.json")
DELETE = "<delete>"  # a JSON edit that removes the field


def write_input(kind: str, folder: Path) -> tuple[str, list[Path]]:
    """IMAGE as an input of ``kind``, placed where the format can say so: its spec, and the
    files that damage may strike (metadata, and whole files where the format has one)."""
    return WRITERS[kind](folder)


def _zarr(folder: Path, version: int) -> tuple[str, list[Path]]:
    extra = {"dimension_names": ["z", "y", "x"]} if version == 3 else {}
    array = zarr.create_array(folder / "in.zarr", shape=IMAGE.shape, chunks=(4, 8, 8), dtype="uint8",
                              zarr_format=version, attributes={"resolution": [40, 4, 4]}, **extra)
    array[:] = IMAGE
    return "in.zarr", [folder / "in.zarr" / ("zarr.json" if version == 3 else ".zarray")]


def _ome_zarr(folder: Path) -> tuple[str, list[Path]]:
    group = zarr.open_group(folder / "in.zarr", mode="w")
    group.create_array("0", shape=IMAGE.shape, chunks=(4, 8, 8), dtype="uint8")[:] = IMAGE
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [40, 4, 4]}]}]}]}
    return "in.zarr", [folder / "in.zarr" / "zarr.json", folder / "in.zarr" / "0" / "zarr.json"]


def _hdf5(folder: Path) -> tuple[str, list[Path]]:
    with h5py.File(folder / "in.h5", "w") as f:
        f.create_dataset("raw", data=IMAGE, chunks=(4, 8, 8), compression="gzip")
        f["raw"].attrs["element_size_um"] = [0.04, 0.004, 0.004]
    return "in.h5:raw", [folder / "in.h5"]


def _imagej_tiff(folder: Path) -> tuple[str, list[Path]]:
    tifffile.imwrite(folder / "in.tif", IMAGE, imagej=True, resolution=(250, 250),
                     metadata={"spacing": 0.04, "unit": "micron"})
    return "in.tif", [folder / "in.tif"]


def _ome_tiff(folder: Path) -> tuple[str, list[Path]]:
    tifffile.imwrite(folder / "in.ome.tif", IMAGE, tile=(16, 16), metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.004, "PhysicalSizeZ": 0.04})
    return "in.ome.tif", [folder / "in.ome.tif"]


def _npy(folder: Path) -> tuple[str, list[Path]]:
    np.save(folder / "in.npy", IMAGE)
    return "in.npy", [folder / "in.npy"]


def _n5(folder: Path) -> tuple[str, list[Path]]:
    write_n5(folder / "in.n5" / "raw", IMAGE, (4, 8, 8), attributes={"resolution": [4, 4, 40]})
    return "in.n5:raw", [folder / "in.n5" / "raw" / "attributes.json"]


WRITERS = {"zarr3": lambda f: _zarr(f, 3), "zarr2": lambda f: _zarr(f, 2), "ome-zarr": _ome_zarr, "hdf5": _hdf5,
           "imagej-tiff": _imagej_tiff, "ome-tiff": _ome_tiff, "npy": _npy,
           "n5": _n5}


def fields(document, prefix=()):
    """Every path into a JSON document, the document's own fields first."""
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) \
        else ()
    for key, value in items:
        yield (*prefix, key)
        yield from fields(value, (*prefix, key))


def damage(path: Path, edits: list, cut: float | None, bytes_: list[tuple[int, int]]) -> None:
    """Replace (or delete) fields of a JSON file, else cut a file short or overwrite some of its
    bytes (most in its first 700: headers, directories, metadata)."""
    if path.name in JSON_FILES:
        document = json.loads(path.read_text())
        for choice, value in edits:
            found = list(fields(document))
            if not found:
                break
            *parents, last = found[choice % len(found)]
            holder = document
            for key in parents:
                holder = holder[key]
            if value == DELETE and isinstance(holder, dict):
                del holder[last]
            elif value != DELETE:
                holder[last] = copy.deepcopy(value)
        path.write_text(json.dumps(document))
        return
    data = bytearray(path.read_bytes())
    if cut is not None:
        del data[int(len(data) * cut):]
    for offset, value in bytes_:
        if data:
            data[offset % len(data)] = value
    path.write_bytes(bytes(data))


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 30), st.just(2**70), st.floats(), st.just(DELETE),
    st.sampled_from(["", "x", "uint8", "raw", "zstd", "ome"]),
    st.lists(st.one_of(st.integers(-1, 30), st.sampled_from(["a", 1.5, None, [1]])), max_size=4),
    st.dictionaries(st.sampled_from(["name", "configuration", "multiscales"]), st.integers(0, 3), max_size=2))
DAMAGE = st.tuples(st.integers(0, 7),  # which of the damageable files
                   st.lists(st.tuples(st.integers(0, 200), JSON_VALUES), min_size=1, max_size=2),
                   st.one_of(st.none(), st.floats(0, 1)),
                   st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=4))
INPUTS = sorted(WRITERS)


def works_or_one_line(capsys, argv: list[str], output: Path) -> int:
    """Run the CLI: exit 0, or 2 with one error line; an output refused is not left looking finished."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("densepred: warning")]
    assert code in (0, 2), err
    if code == 2:
        assert len(lines) == 1, err
        assert lines[0].startswith("densepred: error:"), err
        record = output.with_name(output.name + ".densepred") / "run.json"
        assert not record.exists() or json.loads(record.read_text()).get("complete") is not True
    return code


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_config(tmp_path_factory.mktemp("net"))


def damaged_input_predicts_or_is_one_line(tmp_path_factory, capsys, net, kind, drawn):
    folder = tmp_path_factory.mktemp(kind)
    spec, files = write_input(kind, folder)
    which, edits, cut, bytes_ = drawn
    damage(files[which % len(files)], edits, cut, bytes_)
    output = folder / "out.zarr"
    works_or_one_line(capsys, ["predict", str(net), "--input", f"{folder}/{spec}", "--output", str(output),
                               "--mirror", "--levels", "2", "--quiet", "--device", "cpu"], output)


@seed(20261207)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(INPUTS), DAMAGE)
@example("zarr3", (0, [(1, [9, [1], 23])], None, []))  # found: zarr's TypeError for a shape, a traceback
@example("zarr3", (0, [(25, 5)], None, []))  # found: attributes that are no object, while looking for a run's mark
@example("ome-zarr", (0, [(0, {"ome": 1})], None, []))  # found: OME metadata that is no object
@example("zarr2", (0, [(0, [2**70, 1, 23])], None, []))  # found: 2^70 voxels, a MemoryError listing tiles
@example("n5", (0, [(0, [1e300, 1, 1])], None, []))  # found: a dimension of 1e300, an OverflowError
@example("imagej-tiff", (0, [], None, [(6, 1)]))  # found: tifffile's IndexError, a traceback
@example("imagej-tiff", (0, [], None, [(12, 11)]))  # found: tifffile's TypeError
@example("imagej-tiff", (0, [], None, [(26, 0)]))  # found: tifffile's RuntimeError (incompatible keyframe)
@example("hdf5", (0, [], None, [(120, 0)]))  # found: h5py's RuntimeError while listing the file's datasets
@example("npy", (0, [], None, [(50, 40)]))  # found: a header cut by a bracket, NumPy's TokenError
def test_any_damaged_input_predicts_or_is_one_line(tmp_path_factory, capsys, net, kind, drawn):
    damaged_input_predicts_or_is_one_line(tmp_path_factory, capsys, net, kind, drawn)


OUTPUTS = ["out.zarr", "out.h5:pred", "out.tif", "out.mrc", "out.npy"]


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory, net):
    """The input, and each output kind as an undamaged run writes it (the output and its record
    folder, which a copy elsewhere resumes as it is)."""
    folder = tmp_path_factory.mktemp("undamaged")
    np.save(folder / "in.npy", IMAGE)
    results = {}
    for output in OUTPUTS:
        assert main(resume_args(net, folder / "in.npy", f"{folder}/{output}")) == 0
        results[output] = np.asarray(open_array(f"{folder}/{output}")[...])
    return folder, results


def resume_args(net: Path, source: Path, output: str) -> list[str]:
    pyramid = ["--levels", "2"] if ".zarr" in output else []  # only OME-Zarr holds one
    return ["predict", str(net), "--input", str(source), "--output", output, "--mirror", *pyramid,
            "--tile", "9,12,12", "--quiet", "--device", "cpu"]


def damaged_run_resumes_or_is_one_line(tmp_path_factory, capsys, net, undamaged, output, drawn):
    original, results = undamaged
    source, folder = original / "in.npy", tmp_path_factory.mktemp("resume")
    spec = f"{folder}/{output}"
    path = Path(spec.split(":", maxsplit=1)[0])
    record = path.with_name(path.name + (".pred" if ":" in output else "") + ".densepred") / "run.json"
    for name in (path.name, record.parent.name):  # the finished run, copied
        copy = shutil.copytree if (original / name).is_dir() else shutil.copy2
        copy(original / name, folder / name)
    state = json.loads(record.read_text())
    record.write_text(json.dumps({**state, "complete": False}))  # as if killed before its last tile
    inside = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [record, *sorted(inside, key=lambda p: p.name not in JSON_FILES)]  # metadata first, then data
    which, edits, cut, bytes_ = drawn
    damaged = files[which % len(files)]
    damage(damaged, edits, cut, bytes_)
    capsys.readouterr()
    if works_or_one_line(capsys, [*resume_args(net, source, spec), "--resume"], path) == 0:
        result = np.asarray(open_array(spec)[...])
        if damaged == record:  # the run continues with the tiles the record says (e.g. another batch size)
            np.testing.assert_allclose(result, results[output], atol=1e-6)
        else:
            np.testing.assert_array_equal(result, results[output])


@seed(20261208)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(OUTPUTS), DAMAGE)
@example("out.npy", (0, [(1, [1])], None, []))  # found (the record's input a list): AttributeError
@example("out.npy", (0, [(34, DELETE)], None, []))  # found (no tiles' batch size): KeyError
@example("out.tif", (0, [(33, 3)], None, []))  # found (a mode of 3): ValueError from the geometry
@example("out.h5:pred", (1, [], None, [(152, 0)]))  # found: h5py's RuntimeError, a traceback
@example("out.h5:pred", (1, [], None, [(161, 1)]))  # found: h5py's ValueError creating the dataset again
@example("out.npy", (1, [], None, [(50, 40)]))  # found: a damaged NumPy header, a TokenError
@example("out.tif", (1, [], None, [(18, 0)]))  # found: a damaged TIFF header, tifffile's RuntimeError
@example("out.zarr", (1, [(4, [1])], None, []))  # found: a damaged level's metadata, a TypeError
@example("out.zarr", (3, [(0, False)], None, []))  # found: the image's attributes not an object, a TypeError
@example("out.zarr", (1, [(42, None)], None, []))  # found: a shard index's endian None opens, then fails to read
def test_any_damaged_run_resumes_to_its_result_or_is_one_line(tmp_path_factory, capsys, net, undamaged,
                                                               output, drawn):
    damaged_run_resumes_or_is_one_line(tmp_path_factory, capsys, net, undamaged, output, drawn)
