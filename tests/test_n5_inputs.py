"""N5 inputs (``io/n5.py``). The files here are written byte by byte as the N5 specification
defines them (dimensions and block sizes x first, block headers and values big-endian, x
fastest), not by the library that reads them, so a reversed axis or a wrong byte order fails."""

from __future__ import annotations

import gzip
import json
import math
import struct
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import zarr

import densepred
from densepred.interfaces.cli import main
from densepred.io import open_array
from tests.conftest import make_config
from tests.test_reliability_files import one_error_line


def write_n5(folder: Path, data: np.ndarray, block: tuple[int, ...], compression: str = "raw",
             attributes: dict | None = None, skip: tuple[int, ...] | None = None, edges: str = "cut",
             mode: int = 0) -> None:
    """``data`` (z, y, x order) as an N5 dataset in ``block`` boxes; the block at grid index
    ``skip`` (z, y, x order) is not stored; ``edges="whole"`` stores the blocks at the far faces
    at the full block size (as some writers do), padded; ``mode=1`` writes varlength headers."""
    folder.mkdir(parents=True)
    codec = {"type": compression, **({"useZlib": True} if compression == "zlib" else {})}
    codec["type"] = "gzip" if compression == "zlib" else compression
    meta = {"dimensions": list(reversed(data.shape)), "blockSize": list(reversed(block)), "dataType": data.dtype.name,
            "compression": codec, **(attributes or {})}
    (folder / "attributes.json").write_text(json.dumps(meta))
    for index in product(*(range(-(-n // b)) for n, b in zip(data.shape, block, strict=True))):
        if index == skip:
            continue
        piece = data[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))]
        if edges == "whole":
            piece = np.pad(piece, [(0, b - n) for n, b in zip(piece.shape, block, strict=True)], mode="reflect")
        header = struct.pack(">HH", mode, piece.ndim) + struct.pack(f">{piece.ndim}I", *reversed(piece.shape))
        header += struct.pack(">I", piece.size) if mode == 1 else b""
        values = piece.astype(piece.dtype.newbyteorder(">")).tobytes()  # C order of (z, y, x): x fastest
        path = folder.joinpath(*map(str, reversed(index)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(header + encode(compression, values))


def encode(compression: str, values: bytes) -> bytes:
    """A block's values compressed as N5's Java codecs store them."""
    import bz2
    import lzma
    import zlib

    import numcodecs

    encoders = {"raw": lambda v: v, "gzip": gzip.compress, "zlib": zlib.compress, "bzip2": bz2.compress,
                "xz": lzma.compress, "blosc": numcodecs.Blosc().encode, "zstd": numcodecs.Zstd().encode,
                "lz4": lz4_java}
    return encoders[compression](values)


def lz4_java(values: bytes, frame: int = 400) -> bytes:
    """As lz4-java's LZ4BlockOutputStream writes: frames of at most ``frame`` bytes, each
    ``LZ4Block``, a token, the stored and original lengths and a checksum (little-endian; not
    computed here), LZ4-compressed (token 0x20) except every third, stored (0x10); then an empty
    frame."""
    import numcodecs

    out = bytearray()
    for n, at in enumerate(range(0, len(values), frame)):
        piece = values[at:at + frame]
        body = piece if n % 3 == 2 else bytes(numcodecs.LZ4().encode(piece))[4:]  # numcodecs' own size header off
        out += b"LZ4Block" + bytes([0x10 if n % 3 == 2 else 0x29]) + struct.pack("<iii", len(body), len(piece), 0)
        out += body
    return bytes(out + b"LZ4Block" + bytes([0x10]) + struct.pack("<iii", 0, 0, 0))


def container(path: Path) -> Path:
    path.mkdir()
    (path / "attributes.json").write_text('{"n5": "4.0.0"}')
    return path


def boxes(shape, rng, count=20):
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in shape]
        yield tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(start, shape, strict=True))


@pytest.mark.parametrize(("dtype", "compression", "edges", "mode"), [
    ("uint16", "gzip", "cut", 0), ("float32", "raw", "whole", 1), ("int8", "zlib", "cut", 0),
    ("uint64", "bzip2", "cut", 1), ("float64", "xz", "whole", 0), ("int16", "blosc", "cut", 0),
    ("uint32", "zstd", "cut", 0), ("uint16", "lz4", "cut", 0)])
def test_every_box_of_an_n5_dataset_reads_as_the_array_written(tmp_path, dtype, compression, edges, mode):
    rng = np.random.default_rng(1)
    data = (rng.random((13, 37, 29)) * 100 - (50 if dtype.startswith("int") else 0)).astype(dtype)
    root = container(tmp_path / "v.n5")
    write_n5(root / "em" / "raw", data, (5, 16, 8), compression, skip=(1, 0, 2), edges=edges, mode=mode)
    expected = data.copy()
    expected[5:10, 0:16, 16:24] = 0  # a block not stored reads as N5's fill value
    for spec in (f"{root}:em/raw", f"{root}:em", str(root)):  # the only dataset, also without its name
        array = open_array(spec)
        assert (array.shape, array.dtype, array.chunks) == (data.shape, data.dtype, (5, 16, 8))
    for box in [*boxes(data.shape, rng), (slice(None),) * 3, (4, slice(3, 30, 4)), (slice(2, 2), -1), (..., 7)]:
        np.testing.assert_array_equal(array[box], expected[box])
    np.testing.assert_array_equal(np.asarray(array), expected)


def test_named_axes_put_channels_first_and_a_time_point_is_one_volume(tmp_path):
    rng = np.random.default_rng(2)
    two = rng.random((2, 6, 17, 11), dtype=np.float32)  # c, z, y, x; the file lists x, y, z, c
    write_n5(tmp_path / "c.n5" / "two", np.ascontiguousarray(np.moveaxis(two, 0, -1)), (3, 8, 8, 2),
             attributes={"axes": ["c", "x", "y", "z"]})
    np.testing.assert_array_equal(np.asarray(open_array(f"{tmp_path / 'c.n5'}:two")), two)
    movie = rng.random((3, 6, 17, 11), dtype=np.float32)  # t, z, y, x
    write_n5(tmp_path / "c.n5" / "movie", movie, (1, 6, 9, 9), attributes={"axes": ["x", "y", "z", "t"]})
    np.testing.assert_array_equal(np.asarray(open_array(f"{tmp_path / 'c.n5'}:movie@t=2")), movie[2])


def test_a_prediction_from_n5_equals_the_one_from_its_array_and_lies_where_the_file_says(tmp_path):
    config = make_config(tmp_path)
    data = np.random.default_rng(3).integers(0, 255, (15, 53, 47), dtype=np.uint8)
    root = container(tmp_path / "v.n5")
    write_n5(root / "raw", data, (4, 20, 16), "gzip",
             attributes={"resolution": [4, 4, 40], "units": ["nm", "nm", "nm"], "offset": [400, 80, 1200]})
    assert_predicts_as_its_array_placed(config, tmp_path, f"{root}:raw", data)


def assert_predicts_as_its_array_placed(config, tmp_path, spec, data):
    """``spec`` predicts as ``data`` given as NumPy, and its output lies at 40 x 4 x 4 nm with
    voxel 0 of the input at (1200, 80, 400) nm."""
    np.save(tmp_path / "raw.npy", data)
    for name, source in (("file", spec), ("npy", str(tmp_path / "raw.npy"))):
        assert main(["predict", str(config), "--input", source, "--output", str(tmp_path / f"{name}.zarr"),
                     "--tile", "9,23,21", "--mirror", "--quiet"]) == 0
    file, npy = (zarr.open_group(tmp_path / f"{name}.zarr", mode="r") for name in ("file", "npy"))
    np.testing.assert_array_equal(file["0"][...], npy["0"][...])
    multiscale = file.attrs["ome"]["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 40.0, 4.0, 4.0]}, {"type": "translation", "translation": [0, 1200, 80, 400]}]
    assert {a.get("unit") for a in multiscale["axes"][1:]} == {"nanometer"}


@pytest.mark.parametrize("layout", ["n5-viewer", "cellmap"])
def test_a_level_of_a_multiscale_group_is_placed_by_its_downsampling(tmp_path, layout):
    from densepred.io.arrays import ArraySpec, input_placement

    data = np.random.default_rng(4).random((8, 20, 24), dtype=np.float32)
    root = container(tmp_path / "m.n5")
    if layout == "n5-viewer":  # the resolution on the group, each level's factors on the level
        (root / "g").mkdir()
        (root / "g" / "attributes.json").write_text(json.dumps(
            {"pixelResolution": {"dimensions": [0.5, 0.5, 2.0], "unit": "um"}, "scales": [[1, 1, 1], [2, 2, 1]]}))
        write_n5(root / "g" / "s0", data, (4, 10, 12))
        write_n5(root / "g" / "s1", data[:, ::2, ::2].copy(), (4, 10, 12),
                 attributes={"downsamplingFactors": [2, 2, 1]})
        expected = [((2.0, 0.5, 0.5), (0.0, 0.0, 0.0)), ((2.0, 1.0, 1.0), (0.0, 0.25, 0.25))]
    else:  # each level's own scale and translation, z first
        for level in range(2):
            write_n5(root / "g" / f"s{level}", data[:, ::2**level, ::2**level].copy(), (4, 10, 12), attributes={
                "transform": {"axes": ["z", "y", "x"], "ordering": "C", "scale": [8, 4 * 2**level, 4 * 2**level],
                              "translate": [16, 2 * level, 2 * level], "units": ["nm"] * 3}})
        expected = [((8.0, 4.0, 4.0), (16.0, 0.0, 0.0)), ((8.0, 8.0, 8.0), (16.0, 2.0, 2.0))]
    for spec, (size, shift) in zip((f"{root}:g", f"{root}:g/s1"), expected, strict=True):
        placement = input_placement(ArraySpec.parse(spec))
        assert (placement.voxel_size, placement.translation) == (size, shift)
        assert placement.unit == ("micrometer" if layout == "n5-viewer" else "nanometer")
    np.testing.assert_array_equal(np.asarray(open_array(f"{root}:g")), data)  # a group stands for its s0
    np.testing.assert_array_equal(np.asarray(open_array(str(root))), data)  # the container's one multiscale


def test_n5_mistakes_are_one_line(tmp_path, capsys):
    config = make_config(tmp_path)
    data = np.random.default_rng(5).random((9, 30, 26), dtype=np.float32)
    root = container(tmp_path / "v.n5")
    write_n5(root / "a" / "raw", data, (3, 10, 13))
    write_n5(root / "a" / "zfp", data, (3, 10, 13))
    meta = json.loads((root / "a" / "zfp" / "attributes.json").read_text())
    (root / "a" / "zfp" / "attributes.json").write_text(json.dumps({**meta, "compression": {"type": "zfp"}}))
    block = root / "a" / "raw" / "0" / "2" / "1"  # x, y, z: the block at (z, y, x) index (1, 2, 0)
    block.write_bytes(block.read_bytes()[:40])

    def predict(spec, output="o.npy"):
        return main(["predict", str(config), "--input", spec, "--output", str(tmp_path / output), "--quiet"])

    one_error_line(capsys, predict(str(root)), "is an N5 group of 2 datasets; name one as")
    for level in range(2):  # as BigDataViewer and Paintera lay out a multiscale: listed once
        write_n5(root / "setup0" / "timepoint0" / f"s{level}", data[:, ::2**level, ::2**level].copy(), (3, 10, 13))
    one_error_line(capsys, predict(f"{root}"), "(available: a/raw, a/zfp, setup0/timepoint0)")
    one_error_line(capsys, predict(f"{root}:a/raw/1"), "is a folder of chunks inside the N5 dataset")
    one_error_line(capsys, predict(f"{root}:b"), "'b' not found in")
    write_n5(root / "inf", data, (3, 10, 13))  # found beside the precomputed fuzzing: int(inf), a traceback
    meta = json.loads((root / "inf" / "attributes.json").read_text())
    (root / "inf" / "attributes.json").write_text(json.dumps({**meta, "dimensions": [math.inf, 30, 9]}))
    one_error_line(capsys, predict(f"{root}:inf"), "does not describe an N5 dataset of numbers (TypeError")
    one_error_line(capsys, predict(f"{root}:a/zfp"), "densepred reads N5 blocks stored raw, gzip")
    one_error_line(capsys, predict(f"{root}:a/raw"), "chunk [1, 2, 0] of ")
    assert not json.loads((tmp_path / "o.npy.densepred" / "run.json").read_text())["complete"]  # resumable
    one_error_line(capsys, predict(f"{root}:a/raw", "o.n5"), "cannot write")


def test_a_resume_over_a_changed_n5_input_is_refused(tmp_path, capsys):
    from tests.conftest import mark_interrupted

    config = make_config(tmp_path)
    data = np.random.default_rng(6).random((9, 40, 36), dtype=np.float32)
    root = container(tmp_path / "v.n5")
    write_n5(root / "raw", data, (9, 40, 36))
    command = ["predict", str(config), "--input", f"{root}:raw", "--output", str(tmp_path / "o.npy"), "--quiet"]
    assert main(command) == 0
    mark_interrupted(str(tmp_path / "o.npy"))
    data[0, :16, :16] += 1  # a sampled box
    (root / "raw" / "0").rename(tmp_path / "old")
    write_n5(tmp_path / "new", data, (9, 40, 36))
    (tmp_path / "new" / "0").rename(root / "raw" / "0")
    one_error_line(capsys, main([*command, "--resume"]), "the input differs")


@pytest.mark.slow
def test_an_n5_input_feeds_a_model_from_elsewhere_and_a_cluster(tmp_path):
    from safetensors.torch import save_file

    from tests.test_foreign import UNet, trained_looking

    data = np.random.default_rng(7).random((19, 26, 23), dtype=np.float32)
    root = container(tmp_path / "v.n5")
    write_n5(root / "raw", data, (7, 9, 10), "gzip")
    model = trained_looking(UNet(), seed=7).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet.safetensors")
    assert main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", '{"dims": 3, "depth": 2, '
                 '"width": 4}', "--weights", str(tmp_path / "unet.safetensors"), "--input", f"{root}:raw",
                 "--output", str(tmp_path / "m.npy"), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), densepred.predict_dense(
        densepred.from_torch(model, dims=3, in_channels=1), data, mode="exact"), rtol=0, atol=1e-5)
    config = make_config(tmp_path)
    for output, extra in (("one.zarr", []), ("two.zarr", ["--workers", "2"])):
        assert main(["predict", str(config), "--input", f"{root}:raw", "--output", str(tmp_path / output),
                     "--tile", "9,13,12", "--mirror", "--quiet", *extra]) == 0
    np.testing.assert_allclose(zarr.open_group(tmp_path / "two.zarr")["0"][...],
                               zarr.open_group(tmp_path / "one.zarr")["0"][...], rtol=0, atol=1e-6)


def test_the_example_converter_copies_an_n5_volume_with_its_placement(tmp_path, capsys):
    import runpy

    root = container(tmp_path / "v.n5")
    data = np.random.default_rng(8).integers(0, 255, (7, 30, 20), dtype=np.uint8)
    write_n5(root / "raw", data, (4, 16, 16), "gzip",
             attributes={"pixelResolution": {"dimensions": [4, 4, 30], "unit": "nm"}, "offset": [8, 0, 60]})
    converter = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "make_zarr.py"))
    assert converter["main"]([f"{root}:raw", str(tmp_path / "raw.zarr")]) == 0
    assert "voxel size [30.0, 4.0, 4.0]" in capsys.readouterr().out
    copied = zarr.open_array(tmp_path / "raw.zarr", mode="r")
    np.testing.assert_array_equal(copied[...], data)
    from densepred.io.arrays import ArraySpec, input_placement

    assert input_placement(ArraySpec.parse(str(tmp_path / "raw.zarr"))) == input_placement(
        ArraySpec.parse(f"{root}:raw"))


@pytest.mark.slow
def test_a_net_trained_on_n5_volumes_equals_one_trained_on_the_same_arrays(tmp_path):
    import h5py

    from tests.test_training import assert_trains_alike

    def to_n5(folder, config):
        root = container(folder / "data.n5")
        with h5py.File(folder / "data.h5", "r") as f:
            for name in ("raw", "label"):
                values = f[name][...]
                write_n5(root / name, values, tuple(min(16, n) for n in values.shape), "gzip")
        text = config.read_text()
        assert 'raw = "data.h5:raw", label = "data.h5:label"' in text
        config.write_text(text.replace("data.h5:", "data.n5:"))
        (folder / "data.h5").unlink()  # so nothing reads it

    assert_trains_alike(tmp_path, to_n5)
