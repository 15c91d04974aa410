"""Neuroglancer precomputed inputs (``io/precomputed.py``). The sharded, JPEG and PNG volumes
in ``tests/data/precomputed`` were written by tensorstore (``tests/data/make_precomputed.py``),
another implementation of the format, with its own reading of them saved beside; the
unsharded raw volumes here are written byte by byte as the specification defines them."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.io import open_array
from densepred.io.arrays import ArraySpec, input_placement
from densepred.io.precomputed import compressed_morton_code
from densepred.io.reading import read_box
from tests.conftest import make_config
from tests.test_n5_inputs import assert_predicts_as_its_array_placed
from tests.test_placement_fuzz import sound
from tests.test_reliability_files import one_error_line

DATA = Path(__file__).parent / "data" / "precomputed"


def write_precomputed(folder: Path, data: np.ndarray, chunk: tuple[int, int, int], offset=(0, 0, 0),
                      resolution=(4, 4, 40), gz=(), skip=None, encoding="raw") -> None:
    """``data`` (c, z, y, x) as an unsharded raw scale ``s0``: a file per chunk named by its
    voxel range x first from ``offset``, values little-endian with x fastest and channels
    last-varying; the chunks at grid positions (x, y, z) in ``gz`` stored as CloudVolume stores
    compressed ones (``<name>.gz``), the one at ``skip`` not at all."""
    channels, *spatial = data.shape
    size = spatial[::-1]
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": data.dtype.name,
            "num_channels": channels, "scales": [{"key": "s0", "size": size, "resolution": list(resolution),
                                                  "voxel_offset": list(offset), "chunk_sizes": [list(chunk)],
                                                  "encoding": encoding}]}
    (folder / "s0").mkdir(parents=True)
    (folder / "info").write_text(json.dumps(info))
    for cell in product(*(range(-(-n // c)) for n, c in zip(size, chunk, strict=True))):
        if cell == skip:
            continue
        lo = [i * c for i, c in zip(cell, chunk, strict=True)]
        hi = [min(a + c, n) for a, c, n in zip(lo, chunk, size, strict=True)]
        piece = data[:, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        values = piece.astype(piece.dtype.newbyteorder("<")).tobytes()  # C order of (c, z, y, x): x fastest
        name = "_".join(f"{o + a}-{o + b}" for o, a, b in zip(offset, lo, hi, strict=True))
        if cell in gz:
            (folder / "s0" / f"{name}.gz").write_bytes(gzip.compress(values))
        else:
            (folder / "s0" / name).write_bytes(values)


@pytest.mark.parametrize(("name", "key"), [("sharded-murmur", "8_8_30"), ("sharded-jpeg", "4_4_40"),
                                           ("sharded-jpeg", "8_8_40"), ("unsharded-png", "1_1_1")])
def test_volumes_tensorstore_wrote_read_as_tensorstore_reads_them(name, key):
    """MurmurHash3 and identity shards, gzip and raw minishard indexes and data, JPEG and PNG
    chunks, two channels, a voxel offset, edge chunks and a named scale."""
    expected = np.load(DATA / f"{name}-{key}.npy")
    expected = expected if expected.shape[0] > 1 else expected[0]
    image = open_array(f"{DATA / name}:{key}")
    np.testing.assert_array_equal(np.asarray(image), expected)
    rng = np.random.default_rng(8)
    for _ in range(15):
        start = [int(rng.integers(0, n)) for n in expected.shape]
        box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(start, expected.shape, strict=True))
        np.testing.assert_array_equal(image[box], expected[box])
    np.testing.assert_array_equal(image[..., 3, ::2], expected[..., 3, ::2])


def test_the_compressed_morton_code_of_a_published_example():
    """A public worksheet of a sharded volume (grid 671 x 877 x 1286 of 64^3 chunks): block
    (335, 438, 1024) has code 0x434522d9, so with 9 preshift and 6 minishard bits it lies in
    minishard 0x11 of shard 0x868a."""
    code = compressed_morton_code((335, 438, 1024), (671, 877, 1286))
    assert code == 0x434522D9
    assert ((code >> 9) & 0x3F, (code >> 15) & 0xFFFF) == (0x11, 0x868A)


def test_the_first_scale_is_read_unless_one_is_named_and_each_is_placed():
    expected = np.load(DATA / "sharded-jpeg-4_4_40.npy")[0]
    for spec in (str(DATA / "sharded-jpeg"), f"precomputed://{DATA / 'sharded-jpeg'}",
                 f"precomputed://file://{DATA / 'sharded-jpeg'}"):
        np.testing.assert_array_equal(np.asarray(open_array(spec)), expected)
    fine, coarse = (input_placement(ArraySpec.parse(f"{DATA / 'sharded-jpeg'}:{k}")) for k in ("4_4_40", "8_8_40"))
    assert (fine.voxel_size, fine.translation, fine.unit) == ((40.0, 4.0, 4.0), (0.0, 0.0, 0.0), "nanometer")
    assert (coarse.voxel_size, coarse.translation) == ((40.0, 8.0, 8.0), (0.0, 2.0, 2.0))  # centred on 2 x 2
    murmur = input_placement(ArraySpec.parse(str(DATA / "sharded-murmur")))
    assert (murmur.voxel_size, murmur.translation) == ((30.0, 8.0, 8.0), (60.0, -24.0, 40.0))


def test_a_prediction_from_precomputed_equals_the_one_from_its_array_and_lies_where_the_info_says(tmp_path):
    config = make_config(tmp_path)
    data = np.random.default_rng(9).integers(0, 255, (1, 15, 53, 47), dtype=np.uint8)
    write_precomputed(tmp_path / "em", data, (16, 20, 4), offset=(100, 20, 30), gz={(1, 0, 2), (2, 2, 3)})
    assert_predicts_as_its_array_placed(config, tmp_path, f"precomputed://{tmp_path / 'em'}", data[0])


def test_channels_and_a_chunk_not_stored(tmp_path):
    data = np.random.default_rng(10).random((3, 6, 11, 9), dtype=np.float32)
    write_precomputed(tmp_path / "rgb", data, (4, 4, 4), skip=(1, 2, 0))
    expected = data.copy()
    expected[:, 0:4, 8:11, 4:8] = 0  # chunk (x, y, z) = (1, 2, 0) reads as 0
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "rgb"))), expected)


def test_precomputed_mistakes_are_one_line(tmp_path, capsys):
    config = make_config(tmp_path)
    data = np.random.default_rng(11).random((1, 9, 30, 26), dtype=np.float32)
    write_precomputed(tmp_path / "em", data, (13, 10, 3))

    def predict(spec, output="o.npy"):
        return main(["predict", str(config), "--input", spec, "--output", str(tmp_path / output), "--quiet"])

    one_error_line(capsys, predict(f"{tmp_path / 'em'}:s9"), "scale 's9' not found in the precomputed volume")
    shutil.copytree(tmp_path / "em", tmp_path / "seg")
    info = json.loads((tmp_path / "seg" / "info").read_text())
    info["scales"][0]["encoding"] = "compressed_segmentation"
    (tmp_path / "seg" / "info").write_text(json.dumps(info))
    one_error_line(capsys, predict(str(tmp_path / "seg")), "densepred reads the image encodings raw, jpeg, png")
    (tmp_path / "seg" / "info").write_text(json.dumps({**info, "scales": []}))
    one_error_line(capsys, predict(str(tmp_path / "seg")), "is not the info of a neuroglancer precomputed volume")
    chunk = tmp_path / "em" / "s0" / "13-26_10-20_3-6"
    chunk.write_bytes(chunk.read_bytes()[:100])
    one_error_line(capsys, predict(str(tmp_path / "em")), "chunk [1, 1, 1] of ")  # z, y, x
    one_error_line(capsys, predict(str(tmp_path / "em"), "em-copy"), "unsupported format")
    one_error_line(capsys, main(["predict", str(config), "--input", str(tmp_path / "em"), "--output",
                                 f"precomputed://{tmp_path / 'out'}", "--quiet"]), "densepred reads but does not write")
    one_error_line(capsys, predict(str(tmp_path / "em"), "seg"), "densepred reads but does not write")
    one_error_line(capsys, predict(str(tmp_path / "nothere")), "input not found")


def test_a_resume_over_a_changed_chunk_is_refused_and_a_scale_added_beside_is_no_change(tmp_path, capsys, caplog):
    from tests.conftest import mark_interrupted

    config = make_config(tmp_path)
    data = np.random.default_rng(12).random((1, 9, 40, 36), dtype=np.float32)
    write_precomputed(tmp_path / "em", data, (36, 40, 9))
    command = ["predict", str(config), "--input", str(tmp_path / "em"), "--output", str(tmp_path / "o.npy"), "--quiet"]
    assert main(command) == 0
    mark_interrupted(str(tmp_path / "o.npy"))
    (tmp_path / "em" / "s1").mkdir()  # a coarser scale written later by a downsampling job
    (tmp_path / "em" / "s1" / "0-18_0-20_0-9").write_bytes(bytes(18 * 20 * 9 * 4))
    assert main([*command, "--resume"]) == 0
    assert "modification time changed" not in caplog.text  # the stamp covers the scale read, not the folder
    mark_interrupted(str(tmp_path / "o.npy"))
    data[0, 0, :16, :16] += 1  # a sampled box
    shutil.rmtree(tmp_path / "em" / "s0")
    write_precomputed(tmp_path / "new", data, (36, 40, 9))
    (tmp_path / "new" / "s0").rename(tmp_path / "em" / "s0")
    one_error_line(capsys, main([*command, "--resume"]), "the input differs")


VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=4), st.sampled_from(["raw", "jpeg", "png", "s0", "uint8", "float64", "gzip"]),
                  st.lists(st.integers(-2, 40), max_size=4), st.lists(st.lists(st.integers(0, 9), max_size=4),
                                                                     max_size=2))
SCALE_FIELDS = ["key", "size", "resolution", "voxel_offset", "chunk_sizes", "encoding", "sharding"]
SHARDING_FIELDS = ["@type", "hash", "preshift_bits", "minishard_bits", "shard_bits", "data_encoding"]


@seed(20261206)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["data_type", "num_channels", "scales"]), VALUE, max_size=2),
       st.dictionaries(st.sampled_from(SCALE_FIELDS), VALUE, max_size=3),
       st.dictionaries(st.sampled_from(SHARDING_FIELDS), VALUE, max_size=2), st.booleans())
@example({"num_channels": 1}, {}, {}, True)  # found: a read error's message asked the reader for zarr's shards
@example({"num_channels": math.inf}, {}, {}, False)  # found: int(inf), an OverflowError traceback
@example({}, {}, {"preshift_bits": -1}, True)  # found: a negative shift count at the first read
def test_any_info_opens_and_reads_or_is_one_error(tmp_path_factory, top, scale, sharding, sharded):
    """A valid info with fields replaced by any value: the volume opens and reads, or the
    first mistake is a DensePredError (one line in the CLI), never another exception; its
    placement is sound or none."""
    source = DATA / ("sharded-murmur" if sharded else "unsharded-png")
    folder = tmp_path_factory.mktemp("fuzz") / "v"
    shutil.copytree(source, folder)
    info = json.loads((folder / "info").read_text())
    info.update(top)
    if isinstance(info.get("scales"), list) and info["scales"] and isinstance(info["scales"][0], dict):
        info["scales"][0].update(scale)
        if isinstance(info["scales"][0].get("sharding"), dict):
            info["scales"][0]["sharding"].update(sharding)
    (folder / "info").write_text(json.dumps(info, allow_nan=True))
    try:
        image = open_array(str(folder))
        read_box(image, tuple(slice(0, min(n, 5)) for n in image.shape))
    except DensePredError:
        pass
    assert sound(input_placement(ArraySpec.parse(str(folder))))
