"""`densepred predict`: files in, files out, exactly the in-memory result; resume; clear refusals."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

import densepred
from densepred.interfaces.cli import main
from densepred.io.arrays import open_array
from densepred.io.encoding import Encoding
from densepred.running.compute.sink import Sink
from tests.conftest import CONFIG, make_config, mark_interrupted

TILE = "6,19,17"  # MFP-valid: output tiles of 4 x 12 x 10


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(7).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return data


def in_memory(config, volume, tile=TILE, mirror=False, mode="mfp"):
    net = densepred.create_prediction_net(config)
    return densepred.predict_dense(net, volume, mirror=mirror, tile_shape=[int(v) for v in tile.split(",")],
                                   mode=mode)


def predict(config, tmp_path, output, *extra, input_spec=None):
    return main(["predict", str(config), "--input", input_spec or str(tmp_path / "in.npy"), "--output", output,
                 "--tile", TILE, "--mode", "mfp", "--quiet", *extra])


def write_input(tmp_path, kind, data):
    if kind == "npy":
        return str(tmp_path / "in.npy")
    if kind == "h5":
        with h5py.File(tmp_path / "in.h5", "w") as f:
            f["raw"] = data
        return f"{tmp_path / 'in.h5'}:raw"
    if kind == "zarr":
        z = zarr.create_array(tmp_path / "in.zarr", shape=data.shape, chunks=(8, 16, 16), dtype=data.dtype)
        z[:] = data
        return str(tmp_path / "in.zarr")
    tifffile.imwrite(tmp_path / "in.tif", data)
    return str(tmp_path / "in.tif")


OUTPUTS = {"zarr": "out.zarr", "h5": "out.h5:pred", "tif": "out.tif", "npy": "out.npy"}


@pytest.mark.parametrize("kind", ["npy", "h5", "zarr", "tif"])
def test_every_format_round_trips_to_exactly_the_in_memory_prediction(config, volume, tmp_path, kind):
    expected = in_memory(config, volume)
    spec = write_input(tmp_path, kind, volume)
    out = str(tmp_path / OUTPUTS[kind])
    assert predict(config, tmp_path, out, input_spec=spec) == 0
    stored = np.asarray(open_array(out)[...])
    assert stored.dtype == np.float32
    assert stored.shape == expected.shape
    np.testing.assert_array_equal(stored, expected)


def test_zarr_output_is_ome_zarr_sharded_like_the_tiles(config, volume, tmp_path):
    assert predict(config, tmp_path, str(tmp_path / "out.zarr")) == 0
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    transforms = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    net = densepred.build_net(densepred.load_config(config))
    assert transforms[1]["translation"] == [0, *net.geometry.offset]  # output voxel 0 sits at the offset
    array = group["0"]
    assert array.metadata.zarr_format == 3
    assert array.shards == (3, 4, 12, 10)  # one shard per output tile: one writer per shard
    assert array.chunks == (1, 4, 12, 10)
    assert group.attrs["densepred"]["complete"] is True


def test_hdf5_output_is_chunked_and_compressed_and_keeps_other_datasets(config, volume, tmp_path):
    with h5py.File(tmp_path / "out.h5", "w") as f:
        f["raw"] = volume
    assert predict(config, tmp_path, f"{tmp_path / 'out.h5'}:pred/probs") == 0
    with h5py.File(tmp_path / "out.h5", "r") as f:
        dataset = f["pred/probs"]
        assert dataset.chunks == (3, 4, 12, 10)
        assert dataset.compression == "gzip"
        np.testing.assert_array_equal(f["raw"][...], volume)
        assert json.loads(dataset.attrs["densepred"])["complete"] is True


@pytest.mark.parametrize(("extra", "encode"), [
    (["--dtype", "uint8"], Encoding(3, "uint8")),
    (["--dtype", "float16", "--classes", "2,0"], Encoding(3, "float16", (2, 0))),
    (["--argmax"], Encoding(3, argmax=True)),
])
def test_stored_values_are_the_encoded_probabilities(config, volume, tmp_path, extra, encode):
    expected = encode(in_memory(config, volume))
    output = str(tmp_path / ("out.h5:p" if "float16" in extra else "out.zarr"))  # zarr is for viewers: no float16
    assert predict(config, tmp_path, output, *extra) == 0
    stored = open_array(output)[...]
    assert stored.dtype == expected.dtype
    np.testing.assert_array_equal(stored, expected)
    if "uint8" in extra:
        assert stored.max() > 200
        assert stored.min() < 50


@pytest.mark.parametrize("mirror", [False, True])
def test_roi_is_the_same_box_of_the_full_prediction(config, volume, tmp_path, mirror):
    full = in_memory(config, volume, mirror=mirror)
    net = densepred.build_net(densepred.load_config(config))
    shift = (0, 0, 0) if mirror else net.geometry.offset
    roi = [(3, 8), (11, 30), (20, 29)] if not mirror else [(0, 13), (1, 40), (30, 39)]
    extra = ["--roi", ",".join(f"{a}:{b}" for a, b in roi)] + (["--mirror"] if mirror else [])
    assert predict(config, tmp_path, str(tmp_path / "roi.npy"), *extra) == 0
    box = tuple(slice(a - s, b - s) for (a, b), s in zip(roi, shift, strict=True))
    # other tiles than the full run's: float32 sums in another order, so equal to rounding
    np.testing.assert_allclose(np.load(tmp_path / "roi.npy"), full[(slice(None), *box)], rtol=0, atol=1e-6)


def test_predict_dense_streams_into_an_array_like(config, volume, tmp_path):
    net = densepred.create_prediction_net(config)
    expected = in_memory(config, volume, mirror=True)
    out = zarr.create_array(tmp_path / "direct.zarr", shape=expected.shape, chunks=(3, 8, 8, 8), dtype="float32")
    result = densepred.predict_dense(net, volume, mirror=True, tile_shape=[6, 19, 17], mode="mfp", out=out)
    assert result is out
    np.testing.assert_array_equal(out[...], expected)
    with pytest.raises(densepred.DensePredError, match="out has shape"):
        densepred.predict_dense(net, volume, mirror=False, tile_shape=[6, 19, 17], out=out)


def chunk_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def disk_full_at(monkeypatch, write: int):
    """Sink.write fails with a full disk at its ``write``-th call; returns the original."""
    calls = {"n": 0}
    original = Sink.write

    def failing(self, box, values):
        calls["n"] += 1
        if calls["n"] == write:
            raise OSError(28, "No space left on device")
        return original(self, box, values)

    monkeypatch.setattr(Sink, "write", failing)
    return original


def test_resume_after_a_failure_gives_the_uninterrupted_result(config, volume, tmp_path, monkeypatch, capsys):
    assert predict(config, tmp_path, str(tmp_path / "whole.zarr"), "--batch-size", "2") == 0
    original = disk_full_at(monkeypatch, 9)
    out = str(tmp_path / "part.zarr")
    assert predict(config, tmp_path, out, "--batch-size", "2") == 2
    err = capsys.readouterr().err
    done = re.search(r"the disk is full; the output is incomplete \((\d+) of 48 pieces done\)", err)
    assert done, err
    assert 8 <= int(done.group(1)) < 48  # the writer may finish a piece already encoded
    assert "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert zarr.open_group(out, mode="r").attrs["densepred"]["complete"] is False
    assert json.loads((tmp_path / "part.zarr.densepred" / "run.json").read_text())["complete"] is False
    monkeypatch.setattr(Sink, "write", original)
    assert predict(config, tmp_path, out) == 2  # exists: refused without --resume
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    # a chunk write cut short by a crash leaves zarr's temporary file; resume clears it
    (tmp_path / "part.zarr" / "0" / "c" / "0" / "0" / "0" / "0.1234.partial").write_bytes(b"cut")
    assert predict(config, tmp_path, out, "--resume") == 0  # tile, mode and batch size from the record
    assert f"{done.group(1)} already done" in capsys.readouterr().out
    np.testing.assert_array_equal(open_array(out)[...], open_array(str(tmp_path / "whole.zarr"))[...])
    assert chunk_files(tmp_path / "part.zarr") == chunk_files(tmp_path / "whole.zarr")
    assert not (tmp_path / "part.zarr.densepred" / "done.log").exists()


# 14-22 s each: make test-slow, with the kill campaigns. The default run resumes runs killed while they
# create the output and while they write the pyramid (test_ome_zarr), and after a full disk (test_storage_faults)
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["zarr", "npy"])  # shards and a pyramid level; a memory map synced in groups
def test_kill_9_at_a_random_moment_then_resume_is_byte_identical(config, tmp_path, suffix):
    data = np.random.default_rng(3).random((16, 90, 80) if suffix == "zarr" else (40, 200, 180), dtype=np.float32)
    np.save(tmp_path / "big.npy", data)
    base = [sys.executable, "-m", "densepred", "predict", str(config), "--input", str(tmp_path / "big.npy"),
            "--tile", "6,17,17", "--mode", "mfp", "--quiet", *(["--levels", "2"] if suffix == "zarr" else [])]
    subprocess.run([*base, "--output", str(tmp_path / f"whole.{suffix}")], check=True)
    record = tmp_path / f"cut.{suffix}.densepred" / "done.log"
    rng = random.Random(os.getpid())
    for _ in range(3):  # the kill can land after the last tile; then try again
        victim = subprocess.Popen([*base, "--output", str(tmp_path / f"cut.{suffix}"), "--overwrite"])
        deadline = time.monotonic() + 60
        while not (record.exists() and record.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        if record.exists():
            break
    else:
        pytest.skip("every run finished before the kill")
    done_before = len(record.read_text().split("\n")) - 1
    resumed = subprocess.run([*base, "--output", str(tmp_path / f"cut.{suffix}"), "--resume"], capture_output=True,
                             text=True, check=True)
    assert f"{done_before} already done" in resumed.stdout or done_before == 0
    if suffix == "zarr":
        assert chunk_files(tmp_path / "cut.zarr") == chunk_files(tmp_path / "whole.zarr")
    else:
        assert (tmp_path / "cut.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_resume_with_other_settings_or_weights_is_refused(config, volume, tmp_path, capsys):
    out = str(tmp_path / "out.npy")
    assert predict(config, tmp_path, out) == 0
    mark_interrupted(out)
    capsys.readouterr()
    assert main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output", out, "--tile", "6,23,17",
                 "--resume", "--quiet"]) == 2
    assert "the tiling (tile, mode, batch size, mirror or region) differs" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    weights = make_config(other, seed=1).parent / "run" / "stream-LAST.safetensors"
    assert predict(config, tmp_path, out, "--resume", "--weights", str(weights)) == 2
    assert "the network config or weights differs" in capsys.readouterr().err
    assert predict(config, tmp_path, str(tmp_path / "never.npy"), "--resume") == 0  # nothing begun: a fresh start
    np.save(tmp_path / "mine.npy", volume)
    assert predict(config, tmp_path, str(tmp_path / "mine.npy"), "--resume") == 2
    assert "mine.npy exists and was not written by densepred predict" in capsys.readouterr().err
    assert predict(config, tmp_path, str(tmp_path / "kept.zarr")) == 0
    shutil.rmtree(tmp_path / "kept.zarr.densepred")  # densepred's output without its record
    assert predict(config, tmp_path, str(tmp_path / "kept.zarr"), "--resume") == 2
    assert "it has no run record" in capsys.readouterr().err
    assert predict(config, tmp_path, str(tmp_path / "kept.zarr"), "--overwrite") == 0  # as the message says
    np.testing.assert_array_equal(np.load(tmp_path / "mine.npy"), volume)  # not touched


def bad(tmp_path, name, data):
    np.save(tmp_path / name, data)
    return str(tmp_path / name)


@pytest.mark.parametrize(("make_input", "output", "extra", "message"), [
    (lambda p: str(p / "missing.npy"), "out.zarr", [], "input not found"),
    (lambda p: f"{p / 'in.h5'}:nope", "out.zarr", [], "dataset 'nope' not found"),
    (lambda p: bad(p, "flat.npy", np.ones((40, 40), np.float32)), "out.zarr", [], "expected (1, z, y, x)"),
    (lambda p: bad(p, "two.npy", np.ones((2, 9, 40, 40), np.float32)), "out.zarr", [], "expected (1, z, y, x)"),
    (lambda p: bad(p, "small.npy", np.ones((2, 40, 40), np.float32)), "out.zarr", [], "smaller than the network's"),
    (lambda p: str(p / "in.npy"), "no/such/folder/out.zarr", [], "the folder"),
    (lambda p: str(p / "in.npy"), "out.csv", [], "cannot write"),
    (lambda p: str(p / "in.npy"), "out.zarr", ["--tile", "6,21,18", "--mode", "mfp"], "nearest valid tile shapes"),
    (lambda p: str(p / "in.npy"), "out.zarr", ["--roi", "0:5,0:9,0:9"], "region of interest 0:5,0:9,0:9 is invalid"),
    (lambda p: str(p / "in.npy"), "out.zarr", ["--classes", "3"], "classes [3] are invalid"),
    (lambda p: str(p / "in.npy"), "out.zarr", ["--argmax", "--classes", "1"], "cannot be combined"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_output(config, volume, tmp_path, capsys, make_input, output,
                                                            extra, message):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["raw"] = volume
    code = main(["predict", str(config), "--input", make_input(tmp_path), "--output", str(tmp_path / output),
                 "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / output).exists()
    assert not (tmp_path / (output + ".densepred")).exists()


def test_missing_weights_name_the_file(tmp_path, volume, capsys):
    path = tmp_path / "stream.toml"
    path.write_text(CONFIG)
    assert main(["predict", str(path), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy")]) == 2
    assert "stream-LAST.safetensors" in capsys.readouterr().err
