"""A newcomer's mistakes and a hostile environment: each ends in one line that says what is wrong
and what would be valid, exit 2, nothing left that looks finished; messages say what to do here
(no advice that cannot apply, like loading a pickle unsafely or passing --mirror when it was)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import densepred
from densepred.interfaces.cli import main
from tests.test_predict_files import predict
from tests.test_reliability_files import one_error_line


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(5).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return data


@pytest.fixture
def conv(tmp_path):
    (tmp_path / "conv.py").write_text("from torch import nn\n\n\ndef Net():\n"
                                      "    return nn.Conv3d(1, 2, 3, padding=1)\n")
    np.save(tmp_path / "in.npy", np.random.default_rng(6).random((9, 20, 20), dtype=np.float32))
    return f"{tmp_path / 'conv.py'}:Net"


def model_run(tmp_path, model, *extra, output="o.zarr"):
    return main(["predict", "--model", model, "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / output), "--quiet", *extra])


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, volume, capsys):
    (tmp_path / "bad.toml").write_bytes(b'name = "\xff\xfe"\n')
    one_error_line(capsys, predict(tmp_path / "bad.toml", tmp_path, str(tmp_path / "o.zarr")), "is not UTF-8 text")


def test_a_file_name_too_long_is_one_line(config, volume, tmp_path, capsys):
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / ("a" * 300 + ".zarr"))), "File name too long")


def test_a_scheduler_that_is_no_address_is_one_line(config, volume, tmp_path, capsys):
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "o.zarr"), "--scheduler", "not a url"),
                   "cannot reach the Dask scheduler")
    assert not (tmp_path / "o.zarr").exists()


def test_a_local_cluster_whose_workers_do_not_start_is_one_line(config, volume, tmp_path, capsys, monkeypatch):
    """Found by fuzzing --model arguments on a loaded machine: "Nanny failed to start" came as
    distributed's traceback."""
    import distributed

    async def cannot_start(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(distributed.Nanny, "start_unsafe", cannot_start)
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "o.zarr"), "--workers", "2"),
                   "cannot start a local Dask cluster of 2 worker(s): Nanny failed to start. (OSError: [Errno 24] "
                   "Too many open files); check that this machine can start that many processes")
    assert not (tmp_path / "o.zarr").exists()


def test_a_missing_scheduler_file_stops_after_the_connect_timeout(config, volume, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("densepred.running.executors.cluster.CONNECT_TIMEOUT", "1s")
    code = predict(config, tmp_path, str(tmp_path / "o.zarr"), "--scheduler-file", str(tmp_path / "none.json"))
    one_error_line(capsys, code, "dask scheduler --scheduler-file")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(("kwargs", "message"), [("{" + '"a": 1, ' * 200_000 + '"b": 2}', "more than 1,000,000"),
                                                 ("[" * 100_000 + "]" * 100_000, "nested too deeply")])
def test_oversized_model_kwargs_are_one_line(tmp_path, conv, capsys, kwargs, message):
    one_error_line(capsys, model_run(tmp_path, conv, "--model-kwargs", kwargs), message)


def test_overwrite_through_a_symlinked_zarr_is_refused(config, volume, tmp_path, capsys):
    assert predict(config, tmp_path, str(tmp_path / "real.zarr")) == 0
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "link.zarr"), "--overwrite"),
                   "is a symbolic link")
    assert (tmp_path / "real.zarr" / "zarr.json").exists()


def test_a_nul_in_a_spec_given_to_the_api_is_a_densepred_error(config, volume, tmp_path):
    with pytest.raises(densepred.DensePredError, match="array spec"):
        densepred.predict_to_file(densepred.PredictJob(config, str(tmp_path / "in.npy"), "out\x00.zarr"))


def test_a_pickle_with_objects_is_refused_without_unsafe_advice(tmp_path, conv, capsys):
    torch.save({"weight": torch.zeros(1), "extra": nn.ReLU()}, tmp_path / "obj.pt")
    code = model_run(tmp_path, conv, "--weights", str(tmp_path / "obj.pt"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "holds Python objects besides tensors" in err
    assert "weights_only=False" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_text_file_as_weights_is_named_for_what_it_is(tmp_path, conv, capsys):
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    one_error_line(capsys, model_run(tmp_path, conv, "--weights", str(tmp_path / "notes.pt")),
                   "not a PyTorch weights file")


def test_an_empty_axis_is_named_even_with_mirror(config, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((0, 40, 40), np.float32))
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "o.zarr"), "--mirror"), "has an empty axis")


def test_complex_input_is_refused(config, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.ones((13, 47, 39), np.complex64))
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "o.zarr")), "expected real numbers")


def test_int64_input_is_warned_about(config, tmp_path, caplog):
    np.save(tmp_path / "in.npy", np.random.default_rng(0).integers(0, 255, (13, 47, 39)).astype(np.int64))
    with caplog.at_level(logging.WARNING, logger="densepred"):
        densepred.io.ChannelFirst(np.load(tmp_path / "in.npy"), 1, 3)
        densepred.io.ChannelFirst(np.ones((2, 3, 4), np.uint64), 1, 3)
    assert "divided by 9223372036854775807" in caplog.text
    assert "divided by 18446744073709551615" in caplog.text


def test_plan_does_not_say_a_tile_runs(config, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="densepred"):
        main(["plan", str(config), "--shape", "64,256,256", "--tile", "60,250,250", "--memory-limit", "300MB"])
    assert "over the memory limit" in caplog.text, caplog.text
    assert "runs anyway" not in caplog.text
    assert "asked for" not in caplog.text


def test_tta_that_is_no_axis_list_says_what_is_valid(tmp_path, conv, capsys):
    one_error_line(capsys, model_run(tmp_path, conv, "--tta", "banana"), "expected flips (every axis) or the")


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_a_device_torch_knows_but_densepred_does_not_run_on_is_one_line(config, volume, conv, tmp_path, capsys,
                                                                        device):
    """``--device mps`` (a Mac's GPU) ended in torch's traceback, ``meta`` in a copy error."""
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "o.zarr"), "--device", device),
                   f"device '{device}' is not supported: densepred runs on 'cpu' and on NVIDIA GPUs")
    one_error_line(capsys, model_run(tmp_path, conv, "--device", device), "is not supported")
    assert not (tmp_path / "o.zarr").exists()


def test_voxel_size_beyond_float_range_is_refused_before_writing(config, volume, tmp_path, capsys):
    one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "o.zarr"), "--voxel-size", "1e400,1,1"),
                   "positive, finite numbers")
    assert not (tmp_path / "o.zarr").exists()


def test_train_from_python_is_told_how_to_resume_in_python(tmp_path):
    from tests.test_training import write_config

    config = write_config(tmp_path, steps=2)
    densepred.train(config, progress=False)
    with pytest.raises(densepred.DensePredError, match=r"resume=True"):
        densepred.train(config, progress=False)


def test_version():
    done = subprocess.run([sys.executable, "-m", "densepred", "--version"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == f"densepred {densepred.__version__}"


ANSWERED = """
import sys
from densepred.interfaces.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, "torch" in sys.modules)
"""


NET = str(Path(__file__).resolve().parents[1] / "examples" / "neuro3d.toml")


@pytest.mark.parametrize(("arguments", "code"), [(["--version"], 0), (["--help"], 0), (["predict", "--help"], 0),
                                                 (["predikt"], 2), (["predict", "net.toml", "--mode", "fast"], 2),
                                                 (["info", NET, "--input-shape", "23,185,185"], 0)])
def test_help_version_and_argument_mistakes_answer_without_loading_torch(arguments, code):
    """Seconds of loading torch before a newcomer's typo is told: not any more; nor before a
    config's geometry, which is arithmetic."""
    done = subprocess.run([sys.executable, "-c", ANSWERED, *arguments], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == f"{code} False"


@pytest.mark.parametrize(("arguments", "message"), [
    (["predict", NET, "--input", "{tmp}/none.h5:raw", "--output", "{tmp}/o.zarr"], "input not found"),
    (["predict", "{tmp}/none.toml", "--input", "{tmp}/in.npy", "--output", "{tmp}/o.zarr"], "none.toml"),
    (["predict", NET, "--input", "{tmp}/in.npy", "--output", "{tmp}/no/o.zarr"], "/no does not exist"),
    (["predict", NET, "--input", "{tmp}/in.npy", "--output", "{tmp}/in.npy"], "is the input"),
    (["plan", NET, "--input", "{tmp}/none.zarr"], "input not found")])
def test_mistakes_in_the_files_named_answer_without_loading_torch(tmp_path, arguments, message):
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((9, 30, 30), dtype=np.float32))
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    done = subprocess.run([sys.executable, "-c", ANSWERED, *arguments], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "2 False"
    assert message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow  # 6 s
def test_a_local_cluster_needs_no_fixed_scratch_name(config, volume, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    (temp / "dask-scratch-space").write_text("another user's file\n")  # the fixed name is taken
    done = subprocess.run([sys.executable, "-m", "densepred", "predict", str(config), "--input",
                           str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.zarr"), "--workers", "1",
                           "--quiet", "--mirror"], env={**os.environ, "TMPDIR": str(temp)}, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in temp.iterdir()) == ["dask-scratch-space"]  # its own scratch space is gone
    assert json.loads((tmp_path / "o.zarr.densepred" / "run.json").read_text())["complete"]


@pytest.mark.parametrize(("options", "message"), [
    ({"mirror": "no"}, "mirror = 'no' is invalid; expected True or False"),
    ({"resume": "yes"}, "resume = 'yes' is invalid"),
    ({"mode": "fast"}, "mode 'fast' is invalid for a config's net; valid: auto, mfp"),
    ({"classes": "a"}, "classes 'a' are invalid"),
    ({"roi": "0:5"}, "roi '0:5' is invalid; expected a (start, stop) pair"),
    ({"workers": 0}, "workers = 0 is invalid"),
    ({"overlap": 3}, "overlap 3 is invalid"),
    ({"tta": "flips"}, "tta='flips': for models from elsewhere"),
    ({"weights": 5}, "weights = 5 is invalid; expected a file path"),
    ({"contract": "x"}, "contract='x': for models from elsewhere"),
    ({"dims": 2, "in_channels": 3}, "dims=2, in_channels=3: for models from elsewhere"),
    ({"tiles_per_block": "2"}, "tiles_per_block '2' is invalid"),
    ({"voxel_size": "4,4,4"}, "voxel size '4,4,4' is invalid; expected 3 positive, finite numbers (z, y, x)"),
    ({"voxel_size": (4, 4, 4), "unit": 5}, "unit 5 is invalid"),
])
def test_a_predict_job_with_a_wrong_argument_is_one_densepred_error(config, volume, tmp_path, options, message):
    job = densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / "o.zarr"), progress=False, **options)
    with pytest.raises(densepred.DensePredError) as caught:
        densepred.predict_to_file(job)
    assert message in str(caught.value)
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(densepred.DensePredError, match="names no network"):
        densepred.predict_to_file(densepred.PredictJob(None, str(tmp_path / "in.npy"), str(tmp_path / "o.zarr")))


def test_a_predict_job_takes_paths_and_names_an_array_given_as_its_input(config, volume, tmp_path):
    job = densepred.PredictJob(config, tmp_path / "in.npy", tmp_path / "o.zarr", progress=False, mirror=True)
    assert densepred.predict_to_file(job).shape[1:] == volume.shape
    with pytest.raises(densepred.DensePredError) as caught:
        densepred.predict_to_file(densepred.PredictJob(config, volume, str(tmp_path / "p.zarr")))
    assert str(caught.value).count("\n") == 0
    assert "array spec of type ndarray is invalid" in str(caught.value)
    assert "predict_dense" in str(caught.value)


def test_wrong_arguments_to_the_python_api_are_densepred_errors(config, volume):
    net, conv = densepred.build_net(densepred.load_config(config)), nn.Conv3d(1, 2, 3, padding=1)
    wrong = [
        (lambda: densepred.load_config(5), "config path 5 is invalid"),
        (lambda: densepred.build_net(str(config)), "build_net takes a config (densepred.load_config(path)), got str"),
        (lambda: densepred.predict_dense(net, volume, mirror="yes"), "mirror = 'yes' is invalid"),
        (lambda: densepred.from_torch("unet", dims=3, in_channels=1), "model must be a torch.nn.Module"),
        (lambda: densepred.from_torch(conv, dims=3, in_channels=0), "in_channels = 0 is invalid"),
        (lambda: densepred.from_torch(conv, dims=3, in_channels=1, window=-4), "window -4 is invalid"),
        (lambda: densepred.from_torch(conv, dims=3, in_channels=1, factor="2"), "factor '2' is invalid"),
        (lambda: densepred.predict_dense(densepred.from_torch(conv, dims=3, in_channels=1), volume,
                                         tile_shape=(1.5, 8, 8)), "window (1.5, 8, 8) is invalid"),
        (lambda: densepred.profile(config, max_seconds="5"), "max_seconds = '5', repeats = 3: max_seconds must be"),
        (lambda: densepred.profile(config, aspect=(1, "a", 1)), "aspect [1, 'a', 1] is invalid"),
        (lambda: densepred.profile(config, write="yes"), "write = 'yes' is invalid"),
        (lambda: densepred.profile(config, progress=3), "progress = 3 is invalid"),
    ]
    for call, message in wrong:
        with pytest.raises(densepred.DensePredError) as caught:
            call()
        assert message in str(caught.value)


@pytest.mark.parametrize("name", ["made.zarr", "group.zarr:pred"])
def test_an_empty_folder_made_ahead_for_a_zarr_output_is_written_into(config, volume, tmp_path, capsys, name):
    import zarr

    zarr.open_group(tmp_path / "group.zarr", mode="w")  # a container of the user's
    folder = tmp_path / name.replace(":", "/")
    folder.mkdir(parents=True, exist_ok=True)  # mkdir -p out.zarr in a job script
    assert predict(config, tmp_path, str(tmp_path / name)) == 0
    assert (folder / "zarr.json").exists()
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "notes.txt").write_text("someone else's")
    for extra in ((), ("--overwrite",)):
        one_error_line(capsys, predict(config, tmp_path, str(tmp_path / "other.zarr"), *extra),
                       "other.zarr is a folder that is not a zarr store")
    assert (tmp_path / "other.zarr" / "notes.txt").read_text() == "someone else's"


@pytest.mark.parametrize("name", ["theirs.zarr", "theirs.h5:x", "theirs.npy"])
def test_an_output_densepred_did_not_write_is_named_so_at_once_not_offered_to_overwrite(config, volume, tmp_path,
                                                                                       capsys, name):
    import h5py
    import zarr

    if name.endswith(".zarr"):
        zarr.create_array(tmp_path / name, shape=(3,), dtype="float32")
    elif name.endswith(":x"):
        with h5py.File(tmp_path / "theirs.h5", "w") as f:
            f["x"] = np.zeros(3)
    else:
        np.save(tmp_path / name, np.zeros(3))
    for extra in ((), ("--overwrite",)):  # the same answer, which --overwrite does not change
        one_error_line(capsys, predict(config, tmp_path, str(tmp_path / name), *extra),
                       "was not written by densepred predict; --overwrite replaces only densepred outputs")
