"""Faults around `densepred predict` found in review: each test failed before its fix.

No run may destroy data it did not create, mark unwritten voxels complete, or leave a user at
a dead end. The numbers refer to the review's list (docs/RELIABILITY.md).
"""

from __future__ import annotations

import logging
import os
import stat
import zlib

import h5py
import numpy as np
import pytest
import zarr

from densepred.files import atomic_write_text
from densepred.io.arrays import ArraySpec, open_array
from densepred.io.run_record import DoneLog, done_line, read_done
from densepred.networks.weights import save_weights
from densepred.running.compute.sink import Sink
from tests.conftest import mark_interrupted
from tests.test_predict_files import TILE, in_memory, predict


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(11).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return data


def h5_contents(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][...].copy() for name in f}


def one_error_line(capsys, code, message):
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


# -- 1. --overwrite never deletes a file densepred did not create ---------------------------------

def test_1_output_in_the_inputs_own_hdf5_file_is_refused_and_the_file_kept(config, volume, tmp_path, capsys):
    data = tmp_path / "data.h5"
    with h5py.File(data, "w") as f:
        f["raw"], f["labels"] = volume, (volume > 0.5).astype(np.uint8)
    before = h5_contents(data)
    for extra in ([], ["--overwrite"]):
        code = predict(config, tmp_path, f"{data}:pred", *extra, input_spec=f"{data}:raw")
        one_error_line(capsys, code, "is in the input's own HDF5 file")
    after = h5_contents(data)
    assert after.keys() == before.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert not (tmp_path / "data.h5.pred.densepred").exists()


def test_1_overwrite_never_deletes_a_file_hdf5_cannot_open(config, volume, tmp_path, capsys):
    notes = tmp_path / "notes.h5"
    notes.write_text("my lab notes, not HDF5")
    code = predict(config, tmp_path, f"{notes}:pred", "--overwrite")
    one_error_line(capsys, code, "nothing was changed")
    assert notes.read_text() == "my lab notes, not HDF5"


def test_1_overwrite_replaces_only_datasets_and_groups_densepred_wrote(config, volume, tmp_path, capsys):
    mine = tmp_path / "mine.h5"
    with h5py.File(mine, "w") as f:
        f["pred"] = np.arange(10)
    one_error_line(capsys, predict(config, tmp_path, f"{mine}:pred", "--overwrite"), "was not written by densepred")
    np.testing.assert_array_equal(h5_contents(mine)["pred"], np.arange(10))
    store = zarr.open_group(tmp_path / "user.zarr", mode="w")
    store.create_array("raw", shape=(4,), dtype="f4")[:] = 1
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "user.zarr"), "--overwrite"),
                   "was not written by densepred")
    assert np.all(open_array(f"{tmp_path / 'user.zarr'}:raw")[...] == 1)
    # what densepred wrote, it may replace
    assert predict(config, tmp_path, str(tmp_path / "out.zarr")) == 0
    assert predict(config, tmp_path, str(tmp_path / "out.zarr"), "--overwrite") == 0


# -- 2. a torn done.log line never counts, and tile data is durable before its line -------------

def test_2_a_torn_line_is_cut_off_and_never_merges_with_the_next(tmp_path):
    log_file = tmp_path / "done.log"
    log_file.write_text(done_line(5) + "17")  # "17" was torn off by a crash
    assert read_done(tmp_path) == {5}
    done_log = DoneLog(tmp_path)
    done_log.append(3)
    done_log.close()
    assert log_file.read_text() == done_line(5) + done_line(3)
    assert read_done(tmp_path) == {5, 3}  # not 173
    merged = f"173 {zlib.crc32(b'3'):08x}\n"  # what an unguarded append would have produced
    log_file.write_text(merged)
    assert read_done(tmp_path) == set()


def test_2_resume_after_a_torn_record_is_byte_identical(config, volume, tmp_path, monkeypatch):
    assert predict(config, tmp_path, str(tmp_path / "whole.npy")) == 0
    fail_after(monkeypatch, 4)
    out = str(tmp_path / "part.npy")
    assert predict(config, tmp_path, out) == 2
    monkeypatch.undo()
    log_file = tmp_path / "part.npy.densepred" / "done.log"
    lines = log_file.read_text().splitlines(keepends=True)
    log_file.write_text("".join(lines[:-1]) + lines[-1][:1])  # the last line torn
    assert predict(config, tmp_path, out, "--resume") == 0
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "whole.npy"))


def test_2_every_written_box_is_synced_before_its_tile_is_recorded(config, volume, tmp_path, monkeypatch):
    import threading

    from densepred.io.outputs import OutputArray

    events: dict[int, list[str]] = {}  # per writer thread: each finishes its tiles one at a time

    def log(event: str) -> None:
        events.setdefault(threading.get_ident(), []).append(event)

    real_sync = OutputArray.sync
    monkeypatch.setattr(OutputArray, "sync", lambda self, box: (log("sync"), real_sync(self, box))[1])
    real_append = DoneLog.append
    monkeypatch.setattr(DoneLog, "append", lambda self, i: (log("record"), real_append(self, i))[1])
    assert predict(config, tmp_path, str(tmp_path / "out.zarr")) == 0
    assert events
    for thread_events in events.values():
        assert thread_events == ["sync", "record"] * (len(thread_events) // 2)


def fail_after(monkeypatch, tiles):
    original = Sink.write
    calls = {"n": 0}

    def failing(self, box, values):
        calls["n"] += 1
        if calls["n"] > tiles:
            raise OSError(5, "Input/output error")
        return original(self, box, values)

    monkeypatch.setattr(Sink, "write", failing)


# -- 3. the record and the output stay in step ------------------------------------------------------

def test_3_a_failed_output_creation_leaves_no_record(config, volume, tmp_path, monkeypatch, capsys):
    from densepred.running.jobs import file_job

    def broken(*args, **kwargs):
        raise file_job.DensePredError("cannot create out.zarr: simulated")

    monkeypatch.setattr(file_job, "create_output", broken)
    assert predict(config, tmp_path, str(tmp_path / "out.zarr")) == 2
    assert not (tmp_path / "out.zarr.densepred").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert predict(config, tmp_path, str(tmp_path / "out.zarr")) == 0  # not "already exists"


def test_3_an_overwrite_that_cannot_create_the_new_output_leaves_no_hidden_folders(config, volume, tmp_path,
                                                                                  monkeypatch, capsys):
    from densepred.running.jobs import file_job

    assert predict(config, tmp_path, str(tmp_path / "out.zarr")) == 0

    def broken(*args, **kwargs):
        raise file_job.DensePredError("cannot create out.zarr: simulated")

    monkeypatch.setattr(file_job, "create_output", broken)
    assert predict(config, tmp_path, str(tmp_path / "out.zarr"), "--overwrite") == 2
    assert "simulated" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob(".*")) == []  # the old output and record, set aside, are deleted
    assert not (tmp_path / "out.zarr").exists()
    assert not (tmp_path / "out.zarr.densepred").exists()


def test_3_a_deleted_output_is_computed_again_not_reported_done(config, volume, tmp_path, capsys):
    out = tmp_path / "o3.zarr"
    assert predict(config, tmp_path, str(out)) == 0
    expected = open_array(str(out))[...]
    import shutil

    shutil.rmtree(out)
    capsys.readouterr()
    assert predict(config, tmp_path, str(out), "--resume") == 0
    assert "already done" not in capsys.readouterr().out
    np.testing.assert_array_equal(open_array(str(out))[...], expected)
    shutil.rmtree(out)
    assert predict(config, tmp_path, str(out)) == 0  # a leftover record alone is no "already exists"


# -- 4. a changed input is refused on resume --------------------------------------------------------

def test_4_resume_over_a_changed_input_is_refused(config, volume, tmp_path, capsys):
    out = str(tmp_path / "out.npy")
    assert predict(config, tmp_path, out) == 0
    mark_interrupted(out)
    np.save(tmp_path / "in.npy", volume[:, ::-1].copy())  # same path, shape and dtype; other contents
    capsys.readouterr()
    one_error_line(capsys, predict(config, tmp_path, out, "--resume"), "the input differs from the interrupted run")


def test_4_a_touched_but_unchanged_input_resumes_with_a_warning(config, volume, tmp_path, caplog):
    out = str(tmp_path / "out.npy")
    assert predict(config, tmp_path, out) == 0
    mark_interrupted(out)
    os.utime(tmp_path / "in.npy", ns=(1, 1))
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert predict(config, tmp_path, out, "--resume") == 0
    assert "sampled contents are the same" in caplog.text


# -- 5, 6. zarr containers and keys ------------------------------------------------------------------

def test_5_a_zarr_v2_container_is_refused_and_its_arrays_stay_readable(config, volume, tmp_path, capsys):
    store = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    store.create_array("other", shape=volume.shape, dtype=volume.dtype)[:] = volume
    one_error_line(capsys, predict(config, tmp_path, f"{tmp_path / 'v2.zarr'}:pred"), "is a zarr v2 store")
    np.testing.assert_array_equal(open_array(f"{tmp_path / 'v2.zarr'}:other")[...], volume)


@pytest.mark.parametrize("key", ["../victim", "a/../../victim", "a//b", "./a"])
def test_6_keys_that_leave_the_store_are_refused_before_anything_is_deleted(config, volume, tmp_path, capsys, key):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    (tmp_path / "o5.zarr").mkdir()
    one_error_line(capsys, predict(config, tmp_path, f"{tmp_path / 'o5.zarr'}:{key}", "--overwrite"),
                   "must be relative")
    assert (victim / "precious.txt").read_text() == "keep"


# -- 7. resume of a tile that was clipped to the region -------------------------------------------

def test_7_resume_works_when_the_mfp_tile_was_clipped_to_the_roi(config, volume, tmp_path, monkeypatch):
    roi = "2:10,5:14,5:14"  # 9 voxels in y and x: the tile clips to an input of 16, not MFP-valid
    assert predict(config, tmp_path, str(tmp_path / "whole.npy"), "--roi", roi) == 0
    fail_after(monkeypatch, 1)
    out = str(tmp_path / "part.npy")
    assert predict(config, tmp_path, out, "--roi", roi) == 2
    monkeypatch.undo()
    assert predict(config, tmp_path, out, "--roi", roi, "--resume") == 0
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "whole.npy"))


# -- 11. files keep the umask's mode ------------------------------------------------------------------

def test_11_written_files_get_the_umasks_mode_and_edits_keep_a_files_own(config, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
        (tmp_path / "new.txt").chmod(0o640)
        atomic_write_text(tmp_path / "new.txt", "y")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
        import densepred

        save_weights(densepred.build_net(densepred.load_config(config)), tmp_path / "w.safetensors")
        assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(old)


# -- 15. small things users hit ----------------------------------------------------------------------

def test_15_suffixes_in_any_case(config, volume, tmp_path):
    with h5py.File(tmp_path / "DATA.H5", "w") as f:
        f["raw"] = volume
    spec = ArraySpec.parse(f"{tmp_path / 'DATA.H5'}:raw")
    assert spec.key == "raw"
    assert spec.kind == "hdf5"
    assert predict(config, tmp_path, str(tmp_path / "OUT.ZARR"), input_spec=f"{tmp_path / 'DATA.H5'}:raw") == 0


def test_15_a_csv_whose_first_row_has_nan_or_inf_keeps_that_row(tmp_path):
    (tmp_path / "f.csv").write_text("nan,1.5\ninf,2\n3,-inf\n")
    data = open_array(str(tmp_path / "f.csv"))
    assert data.shape == (3, 2)
    (tmp_path / "h.csv").write_text("a,b\n1,2\n")
    assert open_array(str(tmp_path / "h.csv")).shape == (1, 2)


def test_15_nan_input_warns_with_count_and_position_or_is_refused_with_strict(config, volume, tmp_path, capsys,
                                                                               caplog):
    volume[6, 20, 30] = np.nan
    np.save(tmp_path / "in.npy", volume)
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert predict(config, tmp_path, str(tmp_path / "out.npy"), "--dtype", "uint8") == 0
    assert "output voxel(s) have no finite prediction" in caplog.text
    first = caplog.text.split("the first at image voxel ")[1].split(")")[0]
    z, y, x = (int(v) for v in first.split(","))
    assert abs(z - 6) <= 2
    assert abs(y - 20) <= 8
    assert abs(x - 30) <= 8
    code = predict(config, tmp_path, str(tmp_path / "strict.npy"), "--strict")
    one_error_line(capsys, code, "no finite prediction")


def test_the_in_memory_result_still_matches_every_tile(config, volume):
    """The reliability machinery changes no number: tiles of two shapes give the same result."""
    np.testing.assert_allclose(in_memory(config, volume), in_memory(config, volume, tile="8,23,21"), atol=1e-6)
    assert TILE
