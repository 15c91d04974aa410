"""``densepred profile --model``: a model's exact windows measured for an image, from the
smallest exact window to the one ``predict`` takes by default, and a reduced precision's verdict
kept so that predicting with the model in a precision measured slower is refused."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
import torch

from densepred.interfaces.cli import main
from densepred.io import ChannelFirst
from densepred.networks.foreign import from_torch
from densepred.networks.precision_speed import model_layers, remember
from densepred.running.compute.model_run import ModelRun
from densepred.running.planning.model_window import LADDER_RATIO, smallest_exact
from densepred.running.profiling.model_profile import profile_model
from tests.test_foreign import UNet
from tests.test_reliability_files import one_error_line

KWARGS = {"dims": 3, "depth": 2, "width": 4}
CPU = torch.device("cpu")
SHAPE = (37, 62, 57)  # odd sizes; a generous memory limit makes predict's default window cover it


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The verdicts and contracts these tests keep stay with them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def model_args(*extra):
    return ["--model", "tests.test_foreign:UNet", "--model-kwargs", json.dumps(KWARGS), "--device", "cpu", "--quiet",
            *extra]


def exact_windows(window, image):
    """The windows an exact run with ``window`` computes over ``image``: the definition the
    profile's counts must equal."""
    net = from_torch(UNet(**KWARGS).eval(), dims=3, in_channels=1, output="identity")
    run = ModelRun.create(net, ChannelFirst(image, 1, 3), "exact", window, 0.0, None, None, "cpu")
    return len(run.exact_windows())


def test_the_ladder_runs_from_the_smallest_exact_window_to_predicts_default(tmp_path):
    image = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    result = profile_model("tests.test_foreign:UNet", model_kwargs=KWARGS, input=str(tmp_path / "in.npy"),
                           device="cpu", memory_limit=8 * 2**30, repeats=1, progress=False, out=tmp_path / "prof",
                           peaks=False)
    windows = [row.window for row in result.rows]
    net = from_torch(UNet(**KWARGS).eval(), dims=3, in_channels=1, output="identity")
    assert windows[0] == smallest_exact(net.contract)
    assert main(["predict", *model_args(), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "out.zarr"), "--memory-limit", "8GiB"]) == 0
    record = json.loads((tmp_path / "out.zarr.densepred" / "run.json").read_text())
    assert result.default_window == tuple(record["tiles"]["window"])
    assert result.default_window in windows
    voxels = [math.prod(w) for w in windows]
    steps = [w for w in windows[:-1] if w != result.default_window]  # each at least LADDER_RATIO over the last
    assert all(math.prod(b) >= LADDER_RATIO * math.prod(a) for a, b in itertools.pairwise(steps)), windows
    assert voxels == sorted(voxels)
    assert len(set(windows)) == len(windows)
    counts = [row.windows for row in result.rows]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == 1
    for row in result.rows[::2] + result.rows[-1:]:
        assert row.windows == exact_windows(row.window, image), row.window
    assert all(row.status == "ok" and row.seconds > 0 and row.peak_bytes is None for row in result.rows)
    assert result.best is min(result.rows, key=lambda r: r.windows * r.seconds)
    with open(result.csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["window"] for r in table] == ["x".join(map(str, w)) for w in windows]
    assert float(table[0]["voxels_per_s"]) == pytest.approx(math.prod(SHAPE) / result.rows[0].image_seconds, rel=1e-5)


@pytest.mark.usefixtures("emulated_precision")
def test_a_precision_measured_slower_for_a_model_is_refused_until_measured_faster(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.random.default_rng(4).random((21, 40, 37), dtype=np.float32))
    predict = ["predict", *model_args(), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy"),
               "--overwrite"]
    layers = model_layers(UNet(**KWARGS))
    remember(layers, CPU, "bfloat16", 1000.0, 2500.0, "a test, window 20x20x20", "densepred profile --model ...")
    one_error_line(capsys, main([*predict, "--precision", "bfloat16"]),
                   "bfloat16 runs this network slower than float32 on ")
    assert not (tmp_path / "o.npy").exists()
    assert main(predict) == 0  # float32 is never refused
    other = {**KWARGS, "width": 6}  # other layers: not measured
    assert main([*predict[:4], json.dumps(other), *predict[5:], "--precision", "bfloat16"]) == 0
    capsys.readouterr()

    assert main(["profile", *model_args("--shape", "21,40,37", "--precision", "bfloat16", "--repeats", "1",
                                        "--no-peaks")]) == 0
    printed = capsys.readouterr().out
    assert "float32 window " in printed
    assert "fastest: window " in printed
    result = profile_model("tests.test_foreign:UNet", model_kwargs=KWARGS, shape=(21, 40, 37), device="cpu",
                           precision="bfloat16", repeats=1, progress=False, peaks=False)
    reduced, float32 = result.best, result.rows[-1]
    assert float32.precision == "float32"
    assert float32.window == reduced.window
    code = main([*predict, "--precision", "bfloat16"])  # the profile's own verdict, whichever it is
    if reduced.image_seconds <= float32.image_seconds:
        assert code == 0
    else:
        one_error_line(capsys, code, "(densepred profile --model ... --precision bfloat16)")


def test_a_2d_model_over_a_stack_is_profiled_with_slices_as_its_z(tmp_path):
    result = profile_model("tests.test_foreign:UNet", model_kwargs={"dims": 2, "depth": 2, "width": 4}, dims=2,
                           shape=(5, 70, 61), device="cpu", repeats=1, progress=False, memory_limit=8 * 2**30,
                           peaks=False)
    assert result.image_shape == (5, 70, 61)
    assert result.rows[0].window[0] == 1
    assert result.rows[-1].window[0] == 5
    assert result.rows[-1].windows == 1


@pytest.mark.parametrize(("extra", "message"), [
    ([], "a model's profile needs the image it will predict"),
    (["--shape", "20,30,30", "--write"], "--write is for densepred's own nets"),
    (["--shape", "20,30,30", "--modes", "mfp"], "--modes is for densepred's own nets"),
    (["--shape", "20,0,30"], "shape [20, 0, 30] is invalid"),
    (["--shape", "20,30,30", "--precision", "tf32"], "precision tf32 cannot run on cpu"),
    (["--shape", "20,30,30", "--model-kwargs", json.dumps({**KWARGS, "norm": "instance"})],
     "this model cannot be tiled exactly"),
])
def test_model_profile_mistakes_are_one_line_exit_2(capsys, extra, message):
    one_error_line(capsys, main(["profile", *model_args(*extra)]), message)


def test_a_config_profile_refuses_a_models_image_options(tmp_path, capsys):
    one_error_line(capsys, main(["profile", str(tmp_path / "net.toml"), "--shape", "20,30,30"]),
                   "--input and --shape are for a model's profile")
    one_error_line(capsys, main(["profile", "--quiet"]), "densepred profile needs the network's config file")


@pytest.mark.parametrize("peaks", [pytest.param(True, marks=pytest.mark.slow), False])  # True: 30 s, a process a window
def test_a_bioimageio_package_is_profiled_from_its_description(tmp_path, capsys, peaks):
    pytest.importorskip("bioimageio.spec")
    from tests.test_foreign_files import zoo_package

    rdf, _ = zoo_package(tmp_path / "zoo")
    assert main(["profile", "--model-file", str(rdf), "--shape", "21,35,30", "--device", "cpu", "--quiet",
                 "--repeats", "1", "--out", str(tmp_path / "prof"), *([] if peaks else ["--no-peaks"])]) == 0
    printed = capsys.readouterr().out
    assert "image 21x35x30" in printed
    assert "fastest: window " in printed
    assert ("measured " in printed) == peaks
    assert (tmp_path / "prof" / "model_profile.csv").exists()


def test_a_window_process_reads_the_zoo_package_its_parent_unpacked(tmp_path, monkeypatch):
    pytest.importorskip("bioimageio.spec")
    import json
    import subprocess
    import zipfile

    from densepred.networks.bioimageio import load_rdf
    from densepred.running.profiling import model_window_process
    from tests.test_foreign_files import zoo_package

    rdf, _ = zoo_package(tmp_path / "zoo")
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        for path in rdf.parent.iterdir():
            archive.write(path, path.name)
    load_rdf(tmp_path / "model.zip")  # the profile unpacks it once, in this process
    sent = []

    def child(command, input, **kwargs):
        sent.append(json.loads(input)["fields"]["model_file"])
        return subprocess.CompletedProcess(command, 0, '{"seconds": 0.01, "peak_bytes": 1, "status": "ok"}\n', "")

    monkeypatch.setattr(model_window_process.subprocess, "run", child)
    model_window_process.measure_in_process({"model_file": tmp_path / "model.zip"}, (21, 35, 30), (21, 35, 30),
                                            "float32", None, True, 1)
    assert sent[0].endswith("rdf.yaml")  # the description it unpacked, not the zip unpacked again per window
    assert not sent[0].startswith(str(tmp_path))


@pytest.mark.slow  # 6 s: a process per window
def test_each_window_is_measured_in_a_process_of_its_own_with_its_peak(tmp_path):
    result = profile_model("tests.test_foreign:UNet", model_kwargs=KWARGS, shape=(21, 40, 37), device="cpu",
                           memory_limit=8 * 2**30, repeats=1, progress=False, out=tmp_path)
    assert len(result.rows) >= 2
    assert all(row.status == "ok" and row.seconds > 0 and row.peak_bytes > 0 for row in result.rows)
    with open(result.csv_path, newline="") as f:
        assert [int(r["peak_bytes"]) for r in csv.DictReader(f)] == [row.peak_bytes for row in result.rows]


def test_a_window_whose_process_the_machine_kills_is_out_of_memory_and_ends_the_walk(monkeypatch, capsys):
    import subprocess

    from densepred.running.profiling import model_window_process

    started = []

    def killed_from_the_third(command, **kwargs):  # the kernel's OOM killer: SIGKILL
        started.append(command)
        if len(started) >= 3:
            return subprocess.CompletedProcess(command, -9, "", "")
        return subprocess.CompletedProcess(command, 0, '{"seconds": 0.01, "peak_bytes": 1000000, "status": "ok"}\n', "")

    monkeypatch.setattr(model_window_process.subprocess, "run", killed_from_the_third)
    assert main(["profile", *model_args("--shape", "21,60,57", "--repeats", "1", "--memory-limit", "8GiB")]) == 0
    printed = capsys.readouterr().out
    assert len(started) == 3
    assert printed.count(" GiB, measured ") == 2  # the first two windows, with their peaks
    assert "ran out of memory" in printed
    assert "fastest: window " in printed


def test_a_profile_whose_first_window_is_killed_is_one_line(monkeypatch, capsys):
    import subprocess

    from densepred.running.profiling import model_window_process

    def killed(command, **kwargs):
        return subprocess.CompletedProcess(command, -9, "", "")

    monkeypatch.setattr(model_window_process.subprocess, "run", killed)
    one_error_line(capsys, main(["profile", *model_args("--shape", "21,60,57", "--repeats", "1")]),
                   "no window could be measured: ")


def test_a_window_process_takes_its_parents_contract_and_probes_nothing_with_the_disk_cache_off(monkeypatch):
    """A read-only home on a cluster node (or DENSEPRED_NO_CONTRACT_CACHE) must not make every
    window's process probe the model again."""
    from densepred.networks import contract, contract_cache, contract_sizes
    from densepred.running.profiling import model_window_process

    monkeypatch.setenv("DENSEPRED_NO_CONTRACT_CACHE", "1")
    monkeypatch.setattr(contract_cache, "_seen", {})
    monkeypatch.setattr(contract_cache, "_given", {})
    fields = {"model": "tests.test_foreign:UNet", "model_kwargs": KWARGS, "dims": 3}
    net, _ = model_window_process.model_for(fields, None, (21, 40, 37))  # no weights: a fixed seed's parameters
    assert net.contract.exact  # the profile's own probe
    handed = json.loads(json.dumps(contract_cache.seen()))  # as the request carries them
    assert len(handed) >= 2  # the sizes and the verdicts
    monkeypatch.setattr(contract_cache, "_seen", {})  # the measuring process starts with nothing
    contract_cache.given(handed)

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")

    for module, name in ((contract, "_verdict"), (contract_sizes, "first_forward"), (contract_sizes, "size_step")):
        monkeypatch.setattr(module, name, no_probe)
    window = list(smallest_exact(net.contract))
    reply = model_window_process.measure_window(fields, [21, 40, 37], window, "float32", None, True, 1)
    assert reply["status"] == "ok"
    assert reply["seconds"] > 0
