"""Storage faults: a corrupt input chunk, a truncated HDF5 input, a file-size limit hit while
writing (a full disk), an input changed on disk between a run and its resume, a read-only output
folder, a second run to an output another run is writing. Each ends in one line and exit 2,
leaves nothing that looks finished, and after the cause is gone ``--resume`` finishes with the
bytes of an uninterrupted run."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from densepred import DensePredError, PredictJob
from densepred.interfaces.cli import main
from tests.conftest import mark_interrupted
from tests.test_predict_files import TILE
from tests.test_reliability_files import one_error_line

SHAPE = (13, 47, 39)


def predict(config, source, output, *extra):
    return main(["predict", str(config), "--input", str(source), "--output", str(output), "--tile", TILE,
                 "--mode", "mfp", "--quiet", *extra])


def command(config, source, output, *extra):
    return [sys.executable, "-m", "densepred", "predict", str(config), "--input", str(source), "--output",
            str(output), "--tile", TILE, "--mode", "mfp", "--quiet", *extra]


def stored(path):
    return np.asarray(zarr.open_group(path, mode="r")["0"][:])


def complete(output):
    record = Path(f"{output}.densepred") / "run.json"
    return record.exists() and json.loads(record.read_text())["complete"]


@pytest.fixture
def zarr_input(tmp_path):
    data = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    array = zarr.create_array(tmp_path / "in.zarr", shape=SHAPE, chunks=(8, 16, 16), dtype="float32")
    array[:] = data
    return tmp_path / "in.zarr"


def test_a_corrupt_input_chunk_is_one_line_naming_the_chunk(config, zarr_input, tmp_path, capsys):
    (zarr_input / "c" / "1" / "1" / "1").write_bytes(b"not zstd at all" * 8)
    one_error_line(capsys, predict(config, zarr_input, tmp_path / "out.zarr"), "chunk [1, 1, 1] of ")
    assert not complete(tmp_path / "out.zarr")


def test_a_corrupt_chunk_in_a_model_run_is_one_line_naming_the_chunk(zarr_input, tmp_path, capsys):
    (zarr_input / "c" / "0" / "2" / "0").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    code = main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", '{"depth": 1, "width": 2}',
                 "--input", str(zarr_input), "--output", str(tmp_path / "out.zarr"), "--quiet", "--mode", "exact"])
    one_error_line(capsys, code, "chunk [0, 2, 0] of ")
    assert not complete(tmp_path / "out.zarr")


def test_a_corrupt_label_chunk_of_training_data_is_one_line_naming_the_chunk(tmp_path, capsys):
    """Found by the damaged-files campaign: labels were read around the reader that names a
    damaged chunk, so one stopped training with zarr's traceback."""
    rng = np.random.default_rng(6)
    zarr.create_array(tmp_path / "raw.zarr", shape=(60, 55), chunks=(30, 30), dtype="float32")[:] = (
        rng.random((60, 55), dtype=np.float32))
    labels = zarr.create_array(tmp_path / "lab.zarr", shape=(60, 55), chunks=(30, 30), dtype="uint8")
    labels[:] = rng.integers(0, 2, (60, 55), dtype=np.uint8)
    (tmp_path / "lab.zarr" / "c" / "1" / "0").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    (tmp_path / "net.toml").write_text("""name = "tiny"
[network]
dims = 2
in_channels = 1
n_classes = 2
layers = [{ filters = 4, kernel = 3 }]
[training]
data = [{ raw = "raw.zarr", label = "lab.zarr" }]
patch_size = 9
steps = 2
""")
    one_error_line(capsys, main(["train", str(tmp_path / "net.toml")]), "chunk [1, 0] of ")


def test_a_damaged_shard_that_a_resumed_model_run_adds_to_is_one_line(zarr_input, tmp_path, capsys):
    """Found by the damaged-files campaign with model runs: a model's windows fill parts of a
    shard, which zarr decodes to merge them; a damaged shard stopped the resume with zstd's
    traceback from a writer thread."""
    import torch

    argv = ["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", '{"depth": 1, "width": 2}',
            "--input", str(zarr_input), "--output", str(tmp_path / "out.zarr"), "--quiet", "--mode", "exact",
            "--tile", "14,16,16"]
    torch.manual_seed(3)  # the same parameters in both runs (the record keeps their hash)
    assert main(argv) == 0
    mark_interrupted(tmp_path / "out.zarr")
    shard = next(p for p in sorted((tmp_path / "out.zarr" / "0" / "c").rglob("*")) if p.is_file())
    shard.write_bytes(b"\x28\xb5\x2f\xfd garbage" + shard.read_bytes()[20:])
    torch.manual_seed(3)
    one_error_line(capsys, main([*argv, "--resume"]), "a shard it adds to cannot be decoded")
    assert not complete(tmp_path / "out.zarr")


def test_a_truncated_hdf5_input_is_one_line(config, tmp_path, capsys):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("raw", data=np.random.default_rng(4).random(SHAPE, dtype=np.float32))
    data = (tmp_path / "in.h5").read_bytes()
    (tmp_path / "in.h5").write_bytes(data[:len(data) // 2])
    one_error_line(capsys, predict(config, f"{tmp_path / 'in.h5'}:raw", tmp_path / "out.zarr"), "in.h5")
    assert not (tmp_path / "out.zarr").exists()


def test_a_full_disk_stops_in_one_line_and_resume_finishes_byte_identical(config, zarr_input, tmp_path):
    assert predict(config, zarr_input, tmp_path / "whole.zarr") == 0
    shards = [p.stat().st_size for p in (tmp_path / "whole.zarr" / "0" / "c").rglob("*") if p.is_file()]
    limit = sorted(shards)[len(shards) // 2]  # about half the shards fit, the rest do not

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cut = tmp_path / "cut.zarr"
    full = subprocess.run(command(config, zarr_input, cut), preexec_fn=small_disk, capture_output=True, text=True,
                          check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert full.returncode == 2, full.stderr
    assert len(full.stderr.strip().splitlines()) == 1, full.stderr
    assert "File too large" in full.stderr
    assert "--resume" in full.stderr
    assert not complete(cut)
    assert predict(config, zarr_input, cut, "--resume") == 0
    assert stored(cut).tobytes() == stored(tmp_path / "whole.zarr").tobytes()


def test_a_zarr_input_changed_on_disk_is_not_resumed_over(config, zarr_input, tmp_path, capsys):
    assert predict(config, zarr_input, tmp_path / "out.zarr") == 0
    mark_interrupted(tmp_path / "out.zarr")
    array = zarr.open_array(zarr_input, mode="r+")
    array[5, 40, 30] = float(array[5, 40, 30]) + 0.5  # one voxel in a sampled box, same shape and dtype
    one_error_line(capsys, predict(config, zarr_input, tmp_path / "out.zarr", "--resume"),
                   "the input differs from the interrupted run")
    assert not complete(tmp_path / "out.zarr")


def test_a_zarr_chunk_rewritten_outside_the_samples_is_warned_about(config, zarr_input, tmp_path, caplog):
    assert predict(config, zarr_input, tmp_path / "out.zarr") == 0
    mark_interrupted(tmp_path / "out.zarr")
    array = zarr.open_array(zarr_input, mode="r+")
    array[5, 20, 20] = float(array[5, 20, 20]) + 0.5  # outside every sampled box: the stamp shows it
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert predict(config, zarr_input, tmp_path / "out.zarr", "--resume") == 0
    assert "modification time changed" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(config, zarr_input, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_error_line(capsys, predict(config, zarr_input, folder / "out.zarr"), "ro")
    finally:
        folder.chmod(0o755)
    assert not (folder / "out.zarr").exists()


KILLED_WHILE_DELETING = """
import os, signal, sys
from pathlib import Path
from densepred.io import output_checks
from densepred.interfaces.cli import main
rmtree = output_checks.shutil.rmtree

def killed(path, *args, **kwargs):  # the old output half deleted, then the process dies
    path = Path(path)
    if (path / "zarr.json").exists():
        next(path.rglob("c")).rename(path / "gone")
        os.kill(os.getpid(), signal.SIGKILL)
    return rmtree(path, *args, **kwargs)

output_checks.shutil.rmtree = killed
main(sys.argv[1:])
"""


def test_a_run_killed_while_deleting_the_old_output_leaves_the_name_free(tmp_path, config):
    np.save(tmp_path / "in.npy", np.random.default_rng(9).random((21, 70, 65), dtype=np.float32))
    args = ["predict", str(config), "--input", str(tmp_path / "in.npy"), "--quiet", "--output"]
    out = tmp_path / "o.zarr"
    assert main([*args, str(out)]) == 0
    expected = zarr.open_group(out, mode="r")["0"][...]
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_DELETING, *args, str(out), "--overwrite"],
                            capture_output=True, text=True, check=False)
    assert killed.returncode == -9, killed.stderr
    left = list(tmp_path.glob(".o.zarr.densepred.*.deleting"))
    assert left  # renamed out of the way: hidden, named after the output
    assert main([*args, str(out), "--resume"]) == 0  # the new run's output, or a fresh one: no --overwrite needed
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["0"][...], expected)
    assert not list(tmp_path.glob(".o.zarr*"))  # the half-deleted folders went with it


HOLD_LOCK = """
import sys, time
from densepred.io import ArraySpec
from densepred.io.run_lock import output_lock
with output_lock(ArraySpec.parse(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("name", ["o.zarr", "o.h5:pred"])
def test_a_second_run_to_an_output_being_written_is_refused_until_the_first_is_gone(config, zarr_input, tmp_path,
                                                                                    capsys, name):
    out = f"{tmp_path / name}"
    assert predict(config, zarr_input, out) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*")
              if p.is_file() and p.relative_to(tmp_path).parts[0].startswith("o.")}
    assert len(before) >= 2
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_error_line(capsys, predict(config, zarr_input, out, "--overwrite", "--classes", "1"),
                       f"is being written by another densepred run (pid {holder.pid} on ")
        one_error_line(capsys, predict(config, zarr_input, out, "--resume"), f"(pid {holder.pid} on ")
        assert {p: p.read_bytes() for p in before} == before  # nothing deleted, nothing rewritten
    finally:
        holder.kill()  # as kill -9: the lock goes with the process, its file stays behind
        holder.wait()
    assert list(tmp_path.glob(".o.*.lock"))
    assert predict(config, zarr_input, out, "--overwrite", "--classes", "1") == 0
    assert not list(tmp_path.glob(".o.*.lock"))


def test_an_output_in_the_inputs_own_zarr_container_is_no_change_of_the_input(config, tmp_path, caplog):
    group = zarr.open_group(tmp_path / "c.zarr", mode="w")
    raw = group.create_array("raw", shape=SHAPE, chunks=(8, 16, 16), dtype="float32")
    raw[:] = np.random.default_rng(5).random(SHAPE, dtype=np.float32)
    source, out = f"{tmp_path / 'c.zarr'}:raw", f"{tmp_path / 'c.zarr'}:pred"
    assert predict(config, source, out) == 0
    mark_interrupted(tmp_path / "c.zarr.pred")
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert predict(config, source, out, "--resume") == 0
    assert "modification time changed" not in caplog.text
    mark_interrupted(tmp_path / "c.zarr.pred")
    raw[5, 20, 20] = float(raw[5, 20, 20]) + 0.5  # the input itself, outside the sampled boxes
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert predict(config, source, out, "--resume") == 0
    assert "modification time changed" in caplog.text


def test_a_file_system_without_locks_runs_unlocked_and_says_so(config, zarr_input, tmp_path, monkeypatch, caplog):
    import errno

    from densepred.io import run_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.INFO, logger="densepred"):
        assert predict(config, zarr_input, tmp_path / "o.zarr") == 0
    assert "cannot lock" in caplog.text
    assert "running unlocked" in caplog.text
    assert complete(tmp_path / "o.zarr")


@pytest.mark.parametrize("name", ["first.zarr", "first.zarr:0", "first.h5:pred", "first.npy"])
def test_an_unfinished_densepred_output_is_refused_as_input_until_it_is_finished(config, zarr_input, tmp_path,
                                                                                  capsys, name):
    first = f"{tmp_path / name}"
    output = first.split(":", maxsplit=1)[0] if name.startswith("first.zarr") else first
    assert predict(config, zarr_input, output, "--classes", "0") == 0
    mark_interrupted(output.replace(":", "."))  # the record, and the mark a killed run leaves in the output
    if name.startswith("first.zarr"):
        zarr.open_group(output, mode="r+").attrs["densepred"] = {"complete": False}
    elif name.endswith(":pred"):
        with h5py.File(tmp_path / "first.h5", "a") as f:
            f["pred"].attrs["densepred"] = json.dumps({"complete": False})
    one_error_line(capsys, predict(config, first, tmp_path / "second.zarr"),
                   f"{name} is the output of a densepred run that has not finished")
    assert not (tmp_path / "second.zarr").exists()
    assert predict(config, zarr_input, output, "--classes", "0", "--resume") == 0
    assert predict(config, first, tmp_path / "second.zarr") == 0


def test_an_input_changed_while_the_run_reads_it_leaves_the_output_unfinished(config, zarr_input, tmp_path):
    from densepred.running.jobs.file_job import plan_job, run_planned

    job = PredictJob(str(config), str(zarr_input), str(tmp_path / "out.zarr"), tile=(10, 29, 29), mode="mfp")
    planned = plan_job(job)
    compute = planned.work.compute

    def written_meanwhile(*args):  # an acquisition still writing the volume being predicted
        computed = compute(*args)
        array = zarr.open_array(zarr_input, mode="r+")
        array[5, 40, 30] = float(array[5, 40, 30]) + 0.5
        return computed

    planned.work.compute = written_meanwhile
    with pytest.raises(DensePredError, match=r"changed while this run read it .* left unfinished: run again with "
                                             r"--overwrite"):
        run_planned(job, planned)
    assert not complete(tmp_path / "out.zarr")
    assert zarr.open_group(tmp_path / "out.zarr", mode="r").attrs["densepred"] == {"complete": False}


def test_a_lock_file_another_user_left_read_only_still_locks(tmp_path, monkeypatch):
    from densepred.io import run_lock

    path = tmp_path / ".o.zarr.densepred.lock"
    path.write_text("pid 1 on another host, started long ago\n")
    opened = os.open

    def as_another_user(name, flags, *args):  # root may write anything: refuse as the file's mode would
        if Path(name) == path and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")
        return opened(name, flags, *args)

    monkeypatch.setattr(run_lock.os, "open", as_another_user)
    held = pytest.raises(DensePredError, match=r"busy \(pid 1 on another host, started long ago\)")
    with run_lock.exclusive(path, "busy"), held, run_lock.exclusive(path, "busy"):
        pass
    assert not path.exists()
