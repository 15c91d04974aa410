"""Precision as a choice: every reduced-precision path keeps to its measured bound against the
float64 definition, float32 stays exact, refusals are one line, and a run's record keeps its
precision (docs/PRECISION.md has the figures these bounds come from)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import densepred
from densepred import DensePredError
from densepred.interfaces.cli import main
from densepred.networks.precision import PRECISIONS
from tests.conftest import NETS, make_config, make_net, mark_interrupted, reference_logits, softmax

CPU = torch.device("cpu")
# Bounds against the float64 definition on the test nets (sharp outputs, batch norm, tanh, MLP
# heads): bfloat16 measured at most 2.9e-3 (docs/PRECISION.md), float16 has 3 more mantissa bits.
BOUNDS = {"bfloat16": (1e-2, 1e-3), "float16": (2e-3, 1e-3)}  # max |dp|, share of argmax flips


# on a CPU without their instructions the 16-bit types run through PyTorch's generic kernels
# (the emulated_precision fixture): the same arithmetic, so the same bounds hold
REDUCED = ("bfloat16", "float16")


@pytest.mark.usefixtures("emulated_precision")
@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("name", ["2d_pool3_mixed", "3d_aniso", "3d_mlp"])
def test_every_engine_keeps_to_the_bound_in_reduced_precision(name, precision, rng):
    spec = NETS[name]
    net = make_net(spec)
    shape = tuple(f + 7 + 2 * i for i, f in enumerate(net.geometry.fov))
    image = rng.random((spec["in_channels"], *shape)).astype(np.float32)
    expected = softmax(reference_logits(net, image.astype(np.float64)))
    net = net.float()
    largest, flips = BOUNDS[precision]
    for mode in ("mfp", "dilated", "naive", "stream"):
        got = densepred.predict_dense(net, image, mode=mode, precision=precision)
        assert got.dtype == np.float32
        error = np.abs(got - expected).max()
        assert 0 < error <= largest, (mode, error)  # > 0: it really computed in 16 bits
        assert np.mean(got.argmax(0) != expected.argmax(0)) <= flips, mode


def test_float32_is_the_default_and_stays_exact(rng):
    net = make_net(NETS["3d_aniso"])
    image = rng.random((1, 13, 29, 27)).astype(np.float32)
    expected = softmax(reference_logits(net, image.astype(np.float64)))
    got = densepred.predict_dense(net.float(), image, mode="mfp", precision="float32")
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_array_equal(got, densepred.predict_dense(net, image, mode="mfp"))


@pytest.mark.usefixtures("emulated_precision")
@pytest.mark.parametrize("precision", REDUCED)
def test_a_model_from_elsewhere_runs_under_autocast_and_is_left_as_it_was(precision, rng):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.BatchNorm3d(6), torch.nn.ReLU(),
                                torch.nn.Conv3d(6, 3, 3, padding=1)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
        model[-1].weight.mul_(10)
    image = rng.random((11, 23, 21)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model.double()(torch.from_numpy(image[None, None]).double()), 1)[0].numpy()
    model.float()
    net = densepred.from_torch(model, dims=3, in_channels=1)
    before = torch.backends.cudnn.allow_tf32
    got = densepred.predict_dense(net, image, mode="exact", tile_shape=(8, 16, 16), precision=precision)
    assert 0 < np.abs(got - expected).max() <= BOUNDS[precision][0]
    blend = densepred.predict_dense(net, image, mode="blend", tile_shape=(8, 16, 16))
    got = densepred.predict_dense(net, image, mode="blend", tile_shape=(8, 16, 16), precision=precision)
    assert 0 < np.abs(got - blend).max() <= BOUNDS[precision][0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the user's model is untouched
    assert torch.backends.cudnn.allow_tf32 == before



@pytest.mark.usefixtures("emulated_precision")
@pytest.mark.parametrize("precision", REDUCED)
def test_class_probabilities_keep_to_the_bound_and_leave_the_net_as_it_was(precision, rng):
    net = make_net(NETS["2d_mlp"], seed=8)
    patches = rng.standard_normal((9, *net.geometry.fov))
    expected = densepred.class_probabilities(net, patches)  # the float64 net: the definition
    net = net.float()
    got = densepred.class_probabilities(net, patches.astype(np.float32), batch_size=4, precision=precision)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert 0 < np.abs(got - expected).max() <= BOUNDS[precision][0]
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with pytest.raises(DensePredError, match="precision 'half' is invalid"):
        densepred.class_probabilities(net, patches, precision="half")

def test_refusals_are_one_line_naming_what_runs(tmp_path, capsys):
    net = make_net(NETS["2d_pool2"]).float()
    image = np.random.default_rng(0).random((30, 30), dtype=np.float32)
    with pytest.raises(DensePredError, match=r"precision tf32 cannot run on cpu: TF32 is a mode of NVIDIA GPUs; "
                                             r"valid there: float32"):
        densepred.predict_dense(net, image, precision="tf32")
    with pytest.raises(DensePredError, match=r"precision 'half' is invalid; valid: float32, tf32, bfloat16, float16"):
        densepred.predict_dense(net, image, precision="half")
    config = make_config(tmp_path)
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((9, 30, 30), dtype=np.float32))
    assert main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy"),
                 "--device", "cpu", "--precision", "tf32", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "TF32 is a mode of NVIDIA GPUs" in err
    assert not (tmp_path / "o.npy").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(config), "--input", "x.npy", "--output", "y.npy", "--precision", "fp8"])
    assert exit_.value.code == 2


def test_a_cpu_without_the_instructions_refuses_unless_emulation_is_asked_for(monkeypatch, caplog):
    from densepred.networks.precision import EMULATE_VARIABLE, runnable_precisions, warn_emulated

    monkeypatch.delenv(EMULATE_VARIABLE, raising=False)
    lacking = [p for p in REDUCED if p not in runnable_precisions(CPU)]
    if not lacking:
        pytest.skip("this CPU has bfloat16 and float16 instructions")
    net = make_net(NETS["2d_pool2"]).float()
    image = np.random.default_rng(3).random((30, 31), dtype=np.float32)
    with pytest.raises(DensePredError, match=rf"precision {lacking[0]} cannot run on cpu: this CPU has no "
                                             rf"{lacking[0]} instructions .*{EMULATE_VARIABLE}=1 runs it all the same"):
        densepred.predict_dense(net, image, precision=lacking[0])
    monkeypatch.setenv(EMULATE_VARIABLE, "1")
    caplog.set_level("WARNING", logger="densepred")
    warn_emulated.cache_clear()  # said once per process: another test may have run it emulated
    got = densepred.predict_dense(net, image, precision=lacking[0])
    assert 0 < np.abs(got - densepred.predict_dense(net, image)).max() <= BOUNDS[lacking[0]][0]
    assert f"{lacking[0]} is emulated on this CPU" in caplog.text


@pytest.mark.usefixtures("emulated_precision")
def test_a_run_records_its_precision_and_a_resume_keeps_it(tmp_path, capsys):
    config = make_config(tmp_path)
    volume = np.random.default_rng(2).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    out = tmp_path / "out.zarr"
    args = ["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output", str(out), "--tile", "6,19,17",
            "--mode", "mfp", "--quiet"]
    assert main([*args, "--precision", "bfloat16"]) == 0
    record = json.loads((Path(str(out) + ".densepred") / "run.json").read_text())
    assert record["network"]["precision"] == "bfloat16"
    import zarr

    stored = zarr.open_group(out, mode="r")["0"][:]
    net = densepred.create_prediction_net(config)
    exact = densepred.predict_dense(net, volume, tile_shape=(6, 19, 17), mode="mfp")
    assert 0 < np.abs(stored - exact).max() <= BOUNDS["bfloat16"][0]
    mark_interrupted(out)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # float32 now
    err = capsys.readouterr().err
    assert "precision: bfloat16 before, float32 now" in err
    assert "--overwrite" in err
    assert main([*args, "--resume", "--precision", "bfloat16"]) == 0


@pytest.mark.usefixtures("emulated_precision")
def test_mixed_precision_training_keeps_float32_weights_and_learns(tmp_path):
    from tests.test_training import write_config

    config = write_config(tmp_path, steps=40)
    result = densepred.train(config, precision="bfloat16", progress=False)
    assert result.step == 40
    from densepred.running.training import read_history

    history = read_history(tmp_path / "run" / "history.csv")
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "tiny-LAST.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())


def test_profile_rows_name_their_precision_and_plan_reads_only_its_own(tmp_path):
    from densepred.running.planning.job_plan import rate_from_profile

    path = tmp_path / "profile.csv"
    path.write_text("mode,input_shape,output_shape,output_voxels,seconds,voxels_per_s,peak_bytes,useful_gflops,"
                    "fraction_of_peak,status,precision\n"
                    "mfp,10x10x10,4x4x4,64,1,64,1,1,0.1,ok,float32\n"
                    "mfp,10x10x10,4x4x4,64,1,256,1,1,0.1,ok,bfloat16\n")
    assert rate_from_profile(path, (10, 10, 10), "mfp")[0] == 64
    assert rate_from_profile(path, (10, 10, 10), "mfp", "bfloat16")[0] == 256
    with pytest.raises(DensePredError, match="no measured rows in float16; run densepred profile --precision float16"):
        rate_from_profile(path, (10, 10, 10), "mfp", "float16")


def test_every_precision_is_named_in_the_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert all(p in text for p in PRECISIONS)
