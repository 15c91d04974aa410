"""``densepred plan --model``: a model's job sized before it runs. Its window count is the
number of forwards the run makes, its time a measured rate (one window timed now, or the
``model_profile.csv`` row of that window)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densepred.interfaces.cli import main
from densepred.running.compute.model_run import ModelRun
from densepred.running.jobs import model_plan
from densepred.running.jobs.model_plan import plan_model_job
from tests.test_reliability_files import one_error_line

KWARGS = {"dims": 3, "depth": 2, "width": 4}
MODEL = ["--model", "tests.test_foreign:UNet", "--model-kwargs", json.dumps(KWARGS), "--device", "cpu"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.mark.parametrize(("mode", "tile"), [("exact", "36,40,48"), ("exact", None), ("blend", "16,24,24")])
def test_the_planned_windows_are_the_forwards_the_run_makes(tmp_path, monkeypatch, capsys, mode, tile):
    np.save(tmp_path / "in.npy", np.random.default_rng(5).random((29, 61, 53), dtype=np.float32))
    tiled = ["--tile", tile] if tile else []
    plan = plan_model_job("tests.test_foreign:UNet", model_kwargs=KWARGS, input=str(tmp_path / "in.npy"),
                          device="cpu", mode=mode, window=None if tile is None else [int(v) for v in tile.split(",")],
                          memory_limit=2 * 2**30, activation="softmax")
    forwards = []
    compute = ModelRun._compute  # every forward of a run, whichever path calls it
    monkeypatch.setattr(ModelRun, "_compute", lambda run, x: forwards.append(run.window) or compute(run, x))
    assert main(["predict", *MODEL, "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.zarr"),
                 "--mode", mode, "--memory-limit", "2GiB", "--quiet", *tiled]) == 0
    assert plan.windows == len(forwards)
    assert set(forwards) == {plan.window}
    assert plan.output_shape == (29, 61, 53)
    assert plan.input_bytes == plan.windows * int(np.prod(plan.window)) * 4  # float32, one channel
    record = json.loads((tmp_path / "o.zarr.densepred" / "run.json").read_text())
    assert tuple(record["tiles"]["window"]) == plan.window
    capsys.readouterr()


def test_the_time_comes_from_the_windows_profile_row_or_one_timed_now(tmp_path, capsys, monkeypatch):
    shape = ["--shape", "30,70,66"]
    assert main(["profile", *MODEL, *shape, "--quiet", "--repeats", "1", "--no-peaks", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["plan", *MODEL, *shape, "--profile", str(tmp_path / "model_profile.csv"), "--workers", "4"]) == 0
    report = capsys.readouterr().out
    assert "this window)" in report
    assert "on 4 worker(s)" in report
    one_error_line(capsys, main(["plan", *MODEL, *shape, "--tile", "40,40,40", "--profile",
                                 str(tmp_path / "model_profile.csv")]),
                   "has no float32 row for window 32x40x40 (its windows: 32x36x36, ")
    monkeypatch.setattr(model_plan, "timed_window", lambda run, window, repeats: (2.5, None))
    plan = plan_model_job("tests.test_foreign:UNet", model_kwargs=KWARGS, shape=(30, 70, 66), device="cpu",
                          measure=True, workers=3)
    assert plan.seconds == pytest.approx(plan.windows * 2.5 / 3)


@pytest.mark.usefixtures("emulated_precision")
def test_plan_measure_of_a_slower_precision_is_refused_and_remembered(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(model_plan, "timed_window",
                        lambda run, window, repeats: ({"float32": 1.0, "bfloat16": 2.0}[run.precision.name], None))
    args = ["plan", *MODEL, "--shape", "30,70,66", "--measure", "--precision", "bfloat16"]
    one_error_line(capsys, main(args), "bfloat16 runs this network slower than float32")
    np.save(tmp_path / "in.npy", np.random.default_rng(5).random((9, 20, 21), dtype=np.float32))
    one_error_line(capsys, main(["predict", *MODEL, "--input", str(tmp_path / "in.npy"), "--output",
                                 str(tmp_path / "o.npy"), "--precision", "bfloat16", "--quiet"]),
                   "(densepred plan --model --measure, window ")


@pytest.mark.parametrize(("extra", "message"), [
    (["--shape", "20,30,30", "--mirror"], "--mirror is for densepred's own nets"),
    (["--shape", "20,30,30", "--mode", "mfp"], "--mode mfp is for densepred's own nets"),
    (["--shape", "20,30,30", "--workers", "0"], "workers = 0 is invalid"),
    (["--shape", "20,30,30", "--tile", "21,21,21"], "window [21, 21, 21] is invalid for this model"),
    (["--shape", "20,30,30", "--input-dtype", "banana"], "input dtype 'banana' is invalid"),
    (["--shape", "20,30,30", "--profile", "/nonexistent/model_profile.csv"], "cannot read the profile"),
])
def test_model_plan_mistakes_are_one_line_exit_2(capsys, extra, message):
    one_error_line(capsys, main(["plan", *MODEL, *extra]), message)


def test_a_profile_of_the_other_kind_is_refused_in_one_line(tmp_path, capsys):
    """Found by hand: a model's model_profile.csv given to a config's plan was a KeyError traceback."""
    model_csv = tmp_path / "model_profile.csv"
    model_csv.write_text("precision,window,windows,seconds_per_window,image_seconds,voxels_per_s,estimated_bytes,"
                         "peak_bytes,heap_kept,status\nfloat32,36x40x48,4,0.5,2,1000,0,,true,ok\n")
    one_error_line(capsys, main(["plan", "examples/m36.toml", "--shape", "100,100,100", "--profile", str(model_csv)]),
                   "has no mode, input_shape column(s), so it is not a network's profile.csv")
    one_error_line(capsys, main(["plan", *MODEL, "--shape", "100,100,100", "--profile", "docs/profile/profile.csv"]),
                   "has no precision, window, seconds_per_window column(s), so it is not a model's model_profile.csv")
    one_error_line(capsys, main(["plan", *MODEL, "--shape", "100,100,100", "--profile", "docs/profile/profile.png"]),
                   "cannot read the profile docs/profile/profile.png: not a CSV file")


def test_plan_without_a_config_or_a_model_is_one_line(capsys):
    one_error_line(capsys, main(["plan", "--shape", "20,30,30"]), "densepred plan needs the network's config file")


def test_a_models_plan_counts_the_anisotropic_pyramid_it_writes_and_says_where_it_lies(tmp_path, capsys):
    import zarr

    data = np.random.default_rng(6).random((40, 300, 280), dtype=np.float32)
    array = zarr.create_array(tmp_path / "raw.zarr", data=data, chunks=(20, 150, 140), zarr_format=2)
    array.attrs.update({"voxel_size": [40, 4, 4], "offset": [0, 8, 0], "units": ["nm"] * 3})
    plan = plan_model_job("tests.test_foreign:UNet", model_kwargs=KWARGS, input=str(tmp_path / "raw.zarr"),
                          device="cpu", activation="softmax", memory_limit=2 * 2**30)
    assert "placed   voxel size 40 x 4 x 4 nanometer, the input's voxel 0 at (0, 8, 0)" in plan.report()
    assert main(["predict", *MODEL, "--input", str(tmp_path / "raw.zarr"), "--output", str(tmp_path / "o.zarr"),
                 "--memory-limit", "2GiB", "--quiet"]) == 0
    group = zarr.open_group(tmp_path / "o.zarr", mode="r")
    levels = len(group.attrs["ome"]["multiscales"][0]["datasets"])
    assert plan.output_bytes == sum(int(np.prod(group[str(i)].shape)) * 4 for i in range(levels))
    capsys.readouterr()
