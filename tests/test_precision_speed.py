"""A reduced precision slower than float32 by the profiler's measure: the profile and ``plan
--measure`` time float32 on the same tile, keep the verdict per network and machine, and
``predict`` in a precision measured slower is refused in one line until a measure finds it faster."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import densepred
from densepred import DensePredError
from densepred.interfaces.cli import main
from densepred.networks import precision_speed
from densepred.networks.precision_speed import refuse_if_slower, remember
from densepred.running.planning import job_plan
from tests.conftest import make_config

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("emulated_precision")  # bfloat16 on any CPU


def predict(tmp_path, config, *extra):
    return main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy"),
                 "--device", "cpu", "--quiet", "--overwrite", *extra])


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The verdicts these tests keep stay with them, never reaching another test's predictions."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((9, 30, 31), dtype=np.float32))
    return make_config(tmp_path)


def test_a_precision_measured_slower_is_refused_until_a_measure_finds_it_faster(tmp_path, files, capsys):
    network = densepred.load_config(files).network
    remember(network, CPU, "bfloat16", 1000.0, 2500.0, "a test, mfp 10x10x10")
    assert predict(tmp_path, files, "--precision", "bfloat16") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "bfloat16 runs this network slower than float32 on " in err
    assert "1,000 against 2,500 output voxels/s (a test, mfp 10x10x10, " in err
    assert "use --precision float32" in err
    assert not (tmp_path / "o.npy").exists()
    assert predict(tmp_path, files) == 0  # float32 is never refused
    net = densepred.create_prediction_net(files)
    with pytest.raises(DensePredError, match="bfloat16 runs this network slower than float32"):
        densepred.predict_dense(net, np.load(tmp_path / "in.npy"), precision="bfloat16")  # the API alike
    other = tmp_path / "other"
    other.mkdir()
    config = (other / "stream.toml")
    config.write_text(files.read_text().replace("n_classes = 3", "n_classes = 4"))
    assert densepred.load_config(config).network != network
    refuse_if_slower(densepred.load_config(config).network, CPU, "bfloat16")  # another network: not measured
    remember(network, CPU, "bfloat16", 3000.0, 2500.0, "a test, mfp 10x10x10")
    assert predict(tmp_path, files, "--precision", "bfloat16") == 0


def test_plan_measure_times_float32_too_and_refuses_the_slower_precision(tmp_path, files, capsys, monkeypatch):
    def timed(cfg, mode, tile, device, precision):
        return {"float32": 1.0, "bfloat16": 2.0}[precision.name]

    monkeypatch.setattr(job_plan, "tile_seconds", timed)
    plan = ["plan", str(files), "--shape", "40,60,60", "--measure", "--device", "cpu", "--precision", "bfloat16"]
    assert main(plan) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "bfloat16 runs this network slower than float32" in err
    assert "(densepred plan --measure, " in err
    assert predict(tmp_path, files, "--precision", "bfloat16") == 2  # the verdict is kept
    capsys.readouterr()
    monkeypatch.setattr(job_plan, "tile_seconds", lambda *a: {"float32": 2.0, "bfloat16": 1.0}[a[-1].name])
    assert main(plan) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert predict(tmp_path, files, "--precision", "bfloat16") == 0


def test_a_reduced_precision_profile_times_float32_on_its_fastest_tile_and_keeps_the_verdict(tmp_path, files):
    result = densepred.profile(files, device="cpu", modes=("mfp",), max_seconds=3, repeats=1, progress=False,
                               out=tmp_path / "profile", precision="bfloat16")
    pair = result.against_float32()
    assert pair is not None
    reduced, full = pair
    assert (full.precision, full.mode, full.input_shape) == ("float32", reduced.mode, reduced.input_shape)
    assert result.best.precision == "bfloat16"
    assert "bfloat16 against float32 on mfp " in result.recommendation()
    with open(result.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["precision"] for r in rows].count("float32") == 1
    network = densepred.load_config(files).network
    assert precision_speed._path(network, CPU, "bfloat16").exists()
    if reduced.voxels_per_s < full.voxels_per_s:
        with pytest.raises(DensePredError, match="slower than float32"):
            refuse_if_slower(network, CPU, "bfloat16")
    else:
        refuse_if_slower(network, CPU, "bfloat16")
