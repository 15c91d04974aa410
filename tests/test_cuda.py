"""The CUDA lane (``make test-gpu``): every engine's exactness, each precision's bound, the file
pipeline, a training step and a model from elsewhere, on an NVIDIA GPU. Skipped without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import densepred
from densepred.interfaces.cli import main
from tests.conftest import NETS, make_config, make_net, reference_logits, softmax

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

# max |dp| against the float64 definition, and the share of argmax flips (docs/PRECISION.md)
BOUNDS = {"float32": (2e-6, 0.0), "tf32": (1e-2, 1e-3), "bfloat16": (1e-2, 1e-3), "float16": (2e-3, 1e-3)}


def _precisions() -> list[str]:
    if not torch.cuda.is_available():
        return list(BOUNDS)
    from densepred.networks.precision import runnable_precisions

    return runnable_precisions(torch.device("cuda"))


@pytest.mark.parametrize("precision", _precisions())
@pytest.mark.parametrize("name", ["2d_pool3_mixed", "3d_aniso", "3d_mlp"])
def test_every_engine_on_cuda_keeps_to_its_bound(name, precision, rng):
    spec = NETS[name]
    net = make_net(spec)
    shape = tuple(f + 7 + 2 * i for i, f in enumerate(net.geometry.fov))
    image = rng.random((spec["in_channels"], *shape)).astype(np.float32)
    expected = softmax(reference_logits(net, image.astype(np.float64)))
    net = net.float()
    largest, flips = BOUNDS[precision]
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for mode in ("mfp", "dilated", "naive", "stream"):
        got = densepred.predict_dense(net, image, mode=mode, device="cuda", precision=precision)
        assert np.abs(got - expected).max() <= largest, mode
        assert np.mean(got.argmax(0) != expected.argmax(0)) <= flips, mode
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_the_file_pipeline_on_cuda_equals_the_cpu_run(tmp_path):
    config = make_config(tmp_path)
    np.save(tmp_path / "in.npy", np.random.default_rng(3).random((21, 70, 65), dtype=np.float32))
    for device in ("cpu", "cuda"):
        assert main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output",
                     str(tmp_path / f"{device}.npy"), "--device", device, "--mirror", "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "cuda.npy"), np.load(tmp_path / "cpu.npy"), atol=1e-5)


@pytest.mark.parametrize("precision", [p for p in _precisions() if p != "tf32"])
def test_a_training_step_on_cuda_learns_in_each_precision(tmp_path, precision):
    from densepred.running.training import read_history
    from tests.test_training import write_config

    config = write_config(tmp_path, steps=40)
    densepred.train(config, device="cuda", precision=precision, progress=False)
    history = read_history(tmp_path / "run" / "history.csv")
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("precision", _precisions())
def test_a_model_from_elsewhere_on_cuda_is_exact_in_float32_and_bounded_otherwise(precision, rng):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(6, 3, 3, padding=1)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(10)
    image = rng.random((19, 41, 37)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model.double()(torch.from_numpy(image[None, None]).double()), 1)[0].numpy()
    net = densepred.from_torch(model.float(), dims=3, in_channels=1)
    got = densepred.predict_dense(net, image, mode="exact", tile_shape=(10, 20, 20), device="cuda",
                                  precision=precision)
    assert np.abs(got - expected).max() <= BOUNDS[precision][0]


def test_copies_on_their_own_streams_never_race_the_compute(rng):
    """Many batches through the pipeline with copies up and down beside the kernels: each
    result equals the CPU's, so no kernel read an input before its copy ended and no writer
    read a result before its copy down did."""
    from densepred.pipeline import run_pipeline
    from densepred.running.compute.transfers import Transfers

    transfers = Transfers(torch.device("cuda"))
    weight = torch.from_numpy(rng.standard_normal((8, 1, 5, 5, 5)).astype(np.float32))
    arrays = [rng.random((1, 1, 40, 96 + i, 80), dtype=np.float32) for i in range(24)]
    got: dict[int, np.ndarray] = {}

    def compute(upload):
        x = transfers.take(upload)
        for _ in range(4):  # long enough for copies to overlap it
            y = torch.nn.functional.conv3d(x, weight.cuda(), padding=2)
        return transfers.download(y, lambda t: torch.softmax(t, dim=1))

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 convolutions, as on the CPU
        run_pipeline(range(len(arrays)), lambda i: transfers.upload(arrays[i]), compute,
                     lambda i, result: got.__setitem__(i, result.numpy()), writers=2)
    for i, array in enumerate(arrays):
        expected = torch.softmax(torch.nn.functional.conv3d(torch.from_numpy(array), weight, padding=2), 1).numpy()
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["mfp", "stream"])
def test_a_file_run_of_many_tiles_on_cuda_equals_the_cpu_run(tmp_path, mode):
    config = make_config(tmp_path)
    np.save(tmp_path / "in.npy", np.random.default_rng(4).random((37, 90, 83), dtype=np.float32))
    for device in ("cpu", "cuda"):
        assert main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output",
                     str(tmp_path / f"{device}.zarr"), "--device", device, "--mode", mode, "--tile", "16,25,25",
                     "--quiet"]) == 0
    import zarr

    cpu, cuda = (zarr.open_group(tmp_path / f"{d}.zarr", mode="r")["0"][...] for d in ("cpu", "cuda"))
    np.testing.assert_allclose(cuda, cpu, atol=1e-5)


def test_a_models_profile_on_cuda_measures_each_window_under_its_estimate(tmp_path):
    """The allocator's peak of every window a model's profile measures stays within the
    estimate the window would be chosen by, and the float32 row of a reduced precision's
    profile is on the same window."""
    from densepred.running.profiling.model_profile import profile_model

    precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    result = profile_model("tests.test_foreign:UNet", model_kwargs={"dims": 3, "depth": 2, "width": 8},
                           shape=(64, 192, 192), device="cuda", precision=precision, repeats=1, progress=False,
                           max_seconds=60, out=tmp_path)
    assert result.rows
    for row in result.rows:
        assert row.status == "ok"
        assert row.peak_bytes is not None
        assert 0 < row.peak_bytes <= row.estimated_bytes, row
    assert result.best is not None
