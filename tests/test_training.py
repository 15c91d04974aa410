"""Training: the loss falls, LAST/BEST/resume work, prediction nets load exactly what was saved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import densepred
from densepred import DensePredError, create_prediction_net, load_config, predict_dense
from densepred.io.synthetic import em_volume
from densepred.running.training import read_history
from tests.conftest import reference_logits, softmax

NETWORK = """
[network]
dims = 2
in_channels = 1
n_classes = 2
batchnorm = true
dropout = 0.1
layers = [{ filters = 8, kernel = 4, pool = 2 }, { filters = 12, kernel = 3 }, { filters = 12, kernel = 3 }]
"""


def write_config(folder: Path, steps: int = 60, extra: str = "", network: str = NETWORK) -> Path:
    raw, label = em_volume((120, 110), seed=4, cell_size=24)
    with h5py.File(folder / "data.h5", "w") as f:
        f["raw"], f["label"] = raw, label
    path = folder / "net.toml"
    path.write_text(f"""name = "tiny"
save_dir = "run"
{network}
[training]
data = [{{ raw = "data.h5:raw", label = "data.h5:label" }}]
patch_size = 33
batch_size = 4
steps = {steps}
lr = 0.01
save_every = 10
validate_every = 10
validation_fraction = 0.25
validation_patches = 8
grey_jitter = 0.05
{extra}
""")
    return path


def assert_trains_alike(tmp_path: Path, convert) -> None:
    """Ten steps on ``write_config``'s data, and on the same data after ``convert(folder, config)``
    rewrote it in another form: the same weights."""
    from safetensors.numpy import load_file

    weights = []
    for form in ("plain", "converted"):
        folder = tmp_path / form
        folder.mkdir()
        config = write_config(folder, steps=10)
        if form == "converted":
            convert(folder, config)
        densepred.train(config, progress=False)
        weights.append(load_file(folder / "run" / "tiny-LAST.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])


def test_loss_falls_and_the_run_leaves_its_files(tmp_path):
    config = write_config(tmp_path, steps=80)
    result = densepred.train(config, progress=False)
    run = tmp_path / "run"
    assert result.step == 80
    assert not result.interrupted
    for name in ("tiny-LAST.safetensors", "tiny-BEST.safetensors", "tiny.toml", "history.csv", "history.png"):
        assert (run / name).is_file(), name
    history = read_history(run / "history.csv")
    assert [row["step"] for row in history] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert min(row["val_loss"] for row in history) < history[0]["val_loss"]
    # the stored config loads on its own and builds the same network
    copy = load_config(run / "tiny.toml")
    assert copy.network == load_config(config).network
    assert copy.save_dir == run.resolve()
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), split.mkdir()
    densepred.train(write_config(straight), steps=40, progress=False)
    densepred.train(write_config(split), steps=20, progress=False)
    result = densepred.train(split / "net.toml", steps=40, resume=True, progress=False)
    assert result.step == 40
    a = load_file(straight / "run" / "tiny-LAST.safetensors")
    b = load_file(split / "run" / "tiny-LAST.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in read_history(split / "run" / "history.csv")] == [10, 20, 30, 40]


def test_a_second_run_into_the_same_save_dir_is_refused(tmp_path):
    config = write_config(tmp_path, steps=10)
    densepred.train(config, progress=False)
    with pytest.raises(DensePredError, match="densepred train --resume"):
        densepred.train(config, progress=False)
    for wrong, message in (({"resume": "yes"}, "resume = 'yes' is invalid"), ({"progress": 3}, "progress = 3")):
        with pytest.raises(DensePredError, match=message):  # "yes" resumed; 3 was taken for no progress
            densepred.train(config, **wrong)


def test_prediction_net_loads_the_last_weights_and_predicts_like_the_trained_net(tmp_path, rng, caplog):
    config = write_config(tmp_path, steps=20)
    densepred.train(config, progress=False)
    saved = load_file(tmp_path / "run" / "tiny-LAST.safetensors")
    net = create_prediction_net(config, patch_size=101, mode="mfp")  # not MFP-valid: moved, with a warning
    assert "not valid for mfp prediction; using the nearest valid" in caplog.text
    assert net.geometry.is_valid(net.tile_shape, "mfp")
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved[key]), key
    image = rng.random((70, 81)).astype(np.float32)
    expected = softmax(reference_logits(net, image[None].astype(np.float64), mirror=True))
    np.testing.assert_allclose(predict_dense(net.float(), image, mirror=True), expected, rtol=0, atol=1e-4)
    assert densepred.create_predncnn is create_prediction_net
    assert densepred.predictDense is predict_dense


def test_weight_file_errors_name_the_file_and_the_tensor(tmp_path):
    config = write_config(tmp_path, steps=10)
    with pytest.raises(DensePredError, match=r"weights file not found: .*tiny-LAST\.safetensors"):
        create_prediction_net(config)
    densepred.train(config, progress=False)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(DensePredError, match=r"corrupt\.safetensors is not a readable safetensors file"):
        create_prediction_net(config, param_file=corrupt)
    wider_network = NETWORK.replace("filters = 12, kernel = 3 },", "filters = 16, kernel = 3 },", 1)
    wider = write_config(tmp_path / "..", network=wider_network)
    with pytest.raises(DensePredError, match=r"tensor 'blocks.1.transform.weight' has shape \[12, 8, 3, 3\] "
                                             r"in the file but \[16, 8, 3, 3\] in the network"):
        create_prediction_net(wider, param_file=tmp_path / "run" / "tiny-LAST.safetensors")


def test_patch_classifier_and_feature_vectors_train(tmp_path, rng):
    patches = rng.random((64, 1, 13, 13)).astype(np.float32)
    labels = (patches[:, 0, 6, 6] > 0.5).astype(np.int64)
    np.save(tmp_path / "patches.npy", patches)
    np.save(tmp_path / "labels.npy", labels)
    features = rng.standard_normal((80, 3))
    np.savetxt(tmp_path / "features.csv", features, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "classes.csv", (features[:, 0] > 0).astype(int), delimiter=",")
    (tmp_path / "patch.toml").write_text("""name = "patch"
[network]
dims = 2
in_channels = 1
n_classes = 2
layers = [{ filters = 4, kernel = 4, pool = 2 }]
mlp = [8]
patch_size = 13
[training]
data = [{ raw = "patches.npy", label = "labels.npy" }]
steps = 20
batch_size = 8
validate_every = 10
""")
    (tmp_path / "features.toml").write_text("""name = "features"
[network]
dims = 0
in_channels = 3
n_classes = 2
mlp = [16]
[training]
data = [{ raw = "features.csv", label = "classes.csv" }]
steps = 40
lr = 0.02
validate_every = 20
""")
    for name, steps in (("patch", 20), ("features", 40)):
        result = densepred.train(tmp_path / f"{name}.toml", progress=False)
        assert result.step == steps
        assert result.best is not None
        (tmp_path / "history.csv").unlink()  # both runs share the config folder as save_dir
    patch_net = create_prediction_net(tmp_path / "patch.toml")
    assert densepred.class_probabilities(patch_net, patches[:5]).shape == (5, 2)
    features_net = create_prediction_net(tmp_path / "features.toml")
    probs = densepred.class_probabilities(features_net, features)
    assert probs.shape == (80, 2)
    assert np.mean(probs.argmax(1) == (features[:, 0] > 0)) > 0.8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("optimizer = 'adamw'", "training.optimizer = 'adamw' is invalid (did you mean 'adam'?)"),
        ("class_weights = [1.0]", "expected 2 non-negative numbers"),
        ("weight_decay = -1", "training.weight_decay = -1 is invalid; expected a number >= 0"),
        ("batchsize = 3", "unknown key 'batchsize' in [training] (did you mean 'batch_size'?)"),
    ],
)
def test_training_config_errors(tmp_path, extra, message):
    with pytest.raises(DensePredError) as error:
        load_config(write_config(tmp_path, extra=extra))
    assert message in str(error.value)


def test_wrong_training_patch_names_the_nearest_valid_sizes(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("patch_size = 33", "patch_size = 34"))
    with pytest.raises(DensePredError, match=r"training.patch_size = \[34, 34\] is not a valid.*"
                                             r"nearest valid: \[33, 33\] or \[35, 35\]"):
        load_config(path)


def test_labels_out_of_range_are_reported(tmp_path):
    config = write_config(tmp_path)
    with h5py.File(tmp_path / "data.h5", "a") as f:
        f["label"][...] = f["label"][...] * 3
    message = r"data.h5:label: label 3 at position \[0, 0\] is out of range; labels must be 0\.\.1"
    with pytest.raises(DensePredError, match=message):
        densepred.train(config, progress=False)


def _wait_for_step(history: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        rows = read_history(history) if history.exists() else []
        if rows and rows[-1]["step"] >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


def _train_process(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "densepred", "train", str(config), "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


# 11-14 s: make test-slow. The default run resumes a stopped training exactly and saves on Ctrl-C
@pytest.mark.slow
def test_sigkill_leaves_a_loadable_last_and_resume_continues_from_its_step(tmp_path):
    config = write_config(tmp_path, steps=100000)
    process = _train_process(config)
    # history.csv reaches step 20 only after LAST of step 10 was saved (a step records, then saves)
    _wait_for_step(tmp_path / "run" / "history.csv", 20, process)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    step = _saved_step(tmp_path / "run" / "tiny-LAST.safetensors")
    assert step >= 10
    assert step % 10 == 0
    create_prediction_net(config)  # loads
    resumed = subprocess.run([sys.executable, "-m", "densepred", "train", str(config), "--quiet",
                              "--resume", "--steps", str(step + 10)], capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained to step {step + 10}" in resumed.stdout
    assert read_history(tmp_path / "run" / "history.csv")[-1]["step"] == step + 10


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_last_and_exits_cleanly(tmp_path, monkeypatch, capsys, caplog, number):
    """SIGINT (a terminal's Ctrl-C) or SIGTERM (a batch system's cancel or time limit; it ended
    the step at once and lost the steps since the last save) to this process during step 12: the
    step ends, LAST is saved at it, and the command says how to continue (the warning, which a
    command's log writes to stderr). The same to a training process: make test-slow."""
    from densepred.interfaces.cli import main
    from densepred.running.training.loop import _Run

    config = write_config(tmp_path, steps=100000)
    step_once = _Run.train_step

    def train_step(self, step):
        if step == 12:
            os.kill(os.getpid(), number)
        return step_once(self, step)

    monkeypatch.setattr(_Run, "train_step", train_step)
    handler = signal.getsignal(number)
    caplog.set_level("WARNING", logger="densepred")
    assert main(["train", str(config), "--quiet"]) == 130
    said = caplog.text + capsys.readouterr().err
    assert "interrupted at step 12" in said
    assert "continue with --resume" in said
    assert _saved_step(tmp_path / "run" / "tiny-LAST.safetensors") == 12
    assert signal.getsignal(number) is handler  # the caller's handler is back


def test_in_python_sigterm_reaches_the_callers_handler_after_last_is_saved(tmp_path, monkeypatch):
    """A script a batch system cancels must not go on to its next step: found when a benchmark
    that trained three nets in turn, sent SIGTERM, stopped the first and started the second.
    SIGTERM now reaches the caller's own handler (or the default, which ends the process) once
    LAST is saved; Ctrl-C still returns, with ``interrupted``."""
    from densepred.running.training.loop import _Run

    class Cancelled(Exception):
        pass

    def cancelled(signum, frame):
        raise Cancelled(signum)

    step_once = _Run.train_step
    sent = {"signal": signal.SIGTERM, "at": 7}

    def train_step(self, step):
        if step == sent["at"]:
            os.kill(os.getpid(), sent["signal"])
        return step_once(self, step)

    monkeypatch.setattr(_Run, "train_step", train_step)
    previous = signal.signal(signal.SIGTERM, cancelled)
    try:
        config = write_config(tmp_path, steps=100000)
        with pytest.raises(Cancelled):
            densepred.train(config, progress=False)
        assert _saved_step(tmp_path / "run" / "tiny-LAST.safetensors") == 7
        assert signal.getsignal(signal.SIGTERM) is cancelled
        sent.update(signal=signal.SIGINT, at=11)
        result = densepred.train(config, resume=True, progress=False)
        assert result.interrupted
        assert result.step == 11
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # 10-12 s each (a training process): make test-slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_to_a_training_process_saves_last_and_exits_cleanly(tmp_path, number):
    config = write_config(tmp_path, steps=100000)
    process = _train_process(config)
    _wait_for_step(tmp_path / "run" / "history.csv", 10, process)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "continue with --resume" in stderr
    assert "Traceback" not in stderr
    assert _saved_step(tmp_path / "run" / "tiny-LAST.safetensors") >= 10


def _saved_step(weights: Path) -> int:
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        return int(f.metadata()["step"])
