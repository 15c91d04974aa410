"""Faults around training, configs, the profiler and devices found in review (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import densepred
from densepred import ConfigError, DensePredError
from densepred.cgroups import memory_room
from densepred.interfaces.cli import main
from densepred.networks.devices import same_device
from densepred.networks.weights import read_safetensors, save_weights
from densepred.running.training import read_history
from tests.test_training import write_config

# -- 8. sparse labels ------------------------------------------------------------------------------


def no_validation(config):
    config.write_text(config.read_text().replace("validation_fraction = 0.25", "validation_fraction = 0"))
    return config


def sparse(folder, fraction_labelled=0.002, seed=0):
    """Labels that are ignore_label (255) almost everywhere, as sparse annotation leaves them."""
    with h5py.File(folder / "data.h5", "a") as f:
        label = f["label"][...]
        keep = np.random.default_rng(seed).random(label.shape) < fraction_labelled
        f["label"][...] = np.where(keep, label, 255)


def test_8_batches_without_a_labelled_voxel_are_skipped_and_counted(tmp_path):
    config = no_validation(write_config(tmp_path, steps=20, extra="ignore_label = 255"))
    sparse(tmp_path)
    result = densepred.train(config, progress=False)
    history = read_history(tmp_path / "run" / "history.csv")
    assert result.step == 20
    assert sum(row["skipped_batches"] for row in history) > 0
    assert all(row["train_loss"] is None or math.isfinite(row["train_loss"]) for row in history)
    assert (tmp_path / "run" / "tiny-LAST.safetensors").exists()


def test_8_validation_without_labelled_voxels_still_leads_to_best(tmp_path):
    config = write_config(tmp_path, steps=20, extra="ignore_label = 255")
    sparse(tmp_path, fraction_labelled=0.0)
    with h5py.File(tmp_path / "data.h5", "a") as f:  # training half labelled, validation half not
        label = f["label"][...]
        label[:60] = np.where(label[:60] == 255, 0, label[:60])
        f["label"][...] = label
    result = densepred.train(config, progress=False)
    history = read_history(tmp_path / "run" / "history.csv")
    assert all(row["val_loss"] is None for row in history)
    assert result.best is not None


# -- 9. what a training resume may change -----------------------------------------------------------

def test_9_resume_without_validation_keeps_a_better_best(tmp_path):
    config = no_validation(write_config(tmp_path, steps=10))
    densepred.train(config, progress=False)
    best = tmp_path / "run" / "tiny-BEST.safetensors"
    net = densepred.build_net(densepred.load_config(config))
    save_weights(net, best, {"step": 10, "score": 1e-9, "name": "tiny"})  # a BEST no later step can beat
    before = best.read_bytes()
    densepred.train(config, resume=True, steps=20, progress=False)
    assert best.read_bytes() == before


def test_9_resume_applies_a_changed_weight_decay_and_refuses_another_optimizer(tmp_path):
    config = write_config(tmp_path, steps=10, extra='optimizer = "sgd"\nweight_decay = 0.0')
    densepred.train(config, progress=False)
    config.write_text(config.read_text().replace("weight_decay = 0.0", "weight_decay = 0.05"))
    densepred.train(config, resume=True, steps=20, progress=False)
    _, metadata = read_safetensors(tmp_path / "run" / "tiny-LAST.optimizer.safetensors")
    assert {group["weight_decay"] for group in json.loads(metadata["param_groups"])} == {0.05}
    config.write_text(config.read_text().replace('optimizer = "sgd"', 'optimizer = "adam"'))
    with pytest.raises(DensePredError, match=r'cannot resume with optimizer = "adam": .* holds sgd state'):
        densepred.train(config, resume=True, steps=30, progress=False)


# -- 10. label range checked before training -----------------------------------------------------------

def test_10_one_bad_label_anywhere_is_named_before_the_first_step(tmp_path):
    config = write_config(tmp_path, steps=1000)
    with h5py.File(tmp_path / "data.h5", "a") as f:
        f["label"][117, 3] = 7
    with pytest.raises(DensePredError, match=r"data.h5:label: label 7 at position \[117, 3\] is out of range"):
        densepred.train(config, progress=False)
    assert not (tmp_path / "run" / "tiny-LAST.safetensors").exists()


# -- 13. the profiler from a plain script --------------------------------------------------------------

@pytest.mark.slow
def test_13_profile_runs_from_a_script_without_a_main_guard(tmp_path):
    (tmp_path / "net.toml").write_text(textwrap.dedent("""\
        [network]
        dims = 2
        in_channels = 1
        n_classes = 2
        layers = [{ filters = 3, kernel = 3, pool = 2 }, { filters = 3, kernel = 3 }]
    """))
    script = tmp_path / "run_profile.py"
    script.write_text("import densepred\n"
                      f"result = densepred.profile({str(tmp_path / 'net.toml')!r}, device='cpu', modes='dilated', "
                      f"max_seconds=4, repeats=1, out={str(tmp_path)!r}, progress=False)\n"
                      "print('best', result.best.input_shape)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "best" in done.stdout


# -- 14. config mistakes that raised raw tracebacks ----------------------------------------------------

NET = '[network]\nin_channels = 1\nn_classes = 2\nlayers = [{ filters = 4, kernel = 3 }]\n'


@pytest.mark.parametrize(("text", "message"), [
    ("dims = 3.0\n", "network.dims = 3.0 is invalid; expected 2, 3 or 0"),
    ("dims = 2\nbatchnorm = true\nmlp = [4]\npatch_size = 5\n",
     "training.batch_size = 1 is invalid with network.batchnorm = true"),
])
def test_14_config_mistakes_are_one_line(tmp_path, capsys, text, message):
    body = NET.replace("[network]\n", "[network]\n" + text)
    if "batchnorm" in text:
        body += '[training]\ndata = []\nbatch_size = 1\n'
    (tmp_path / "bad.toml").write_text(body)
    assert main(["info", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_14_a_network_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    (tmp_path / "huge.toml").write_text("[network]\ndims = 3\nin_channels = 1\nn_classes = 2\n"
                                        "layers = [{ filters = 1000000000, kernel = 3 }]\n")
    with pytest.raises(DensePredError, match=r"30,000,000,002 parameters and needs about .* GiB .* fewer filters"):
        densepred.build_net(densepred.load_config(tmp_path / "huge.toml"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((9, 20, 20)))
    code = main(["predict", str(tmp_path / "huge.toml"), "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "o.npy"), "--weights", str(tmp_path / "w.safetensors")])
    assert code == 2
    assert "parameters and needs about" in capsys.readouterr().err


def test_14_batchnorm_with_batch_1_is_fine_when_every_map_has_many_values():
    cfg = densepred.config_from_dict({"network": {"dims": 2, "in_channels": 1, "n_classes": 2, "batchnorm": True,
                                                  "layers": [{"filters": 2, "kernel": 3}]},
                                      "training": {"batch_size": 1, "patch_size": 9}})
    assert cfg.training.batch_size == 1
    with pytest.raises(ConfigError):
        densepred.config_from_dict({"network": {"dims": 0, "in_channels": 3, "n_classes": 2, "batchnorm": True,
                                                "mlp": [4]}, "training": {"batch_size": 1}})


# -- 16. devices and memory limits -------------------------------------------------------------------

def test_16_equal_devices_are_recognised_and_the_net_is_not_copied_per_chunk(monkeypatch):
    assert same_device("cpu:0", "cpu")
    assert same_device(torch.device("cpu"), "cpu:0")
    import copy

    copies = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: (copies.append(1), real(*a, **k))[1])
    net = densepred.build_net(densepred.config_from_dict({"network": {"dims": 0, "in_channels": 3, "n_classes": 2,
                                                                     "mlp": [4]}}))
    x = np.random.default_rng(0).random((2000, 3), dtype=np.float32)
    densepred.class_probabilities(net, x, device="cpu:0")
    assert copies == []


def test_16_a_cgroup_limit_bounds_the_memory_budget(tmp_path):
    (tmp_path / "proc").write_text("0::/slurm/job1\n")
    (tmp_path / "mountinfo").write_text(f"30 23 0:40 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    group = tmp_path / "cg" / "slurm" / "job1"
    group.mkdir(parents=True)
    (group / "memory.max").write_text("1000000000\n")
    (group / "memory.current").write_text("400000000\n")
    assert memory_room(str(tmp_path / "proc"), str(tmp_path / "mountinfo")) == 600_000_000
    (group / "memory.max").write_text("max\n")
    assert memory_room(str(tmp_path / "proc"), str(tmp_path / "mountinfo")) is None


def test_8_class_weights_that_are_all_zero_are_a_config_error():
    with pytest.raises(ConfigError, match="class_weights are all 0"):
        densepred.config_from_dict({"network": {"dims": 0, "in_channels": 3, "n_classes": 2, "mlp": [4]},
                                    "training": {"class_weights": [0, 0]}})


# -- two trainings into one save_dir -----------------------------------------------------------------

HOLD_TRAINING_LOCK = """
import sys, time
from pathlib import Path
from densepred.io.run_lock import exclusive
with exclusive(Path(sys.argv[1]), "held"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_training_into_a_save_dir_being_trained_into_is_refused(tmp_path, capsys):
    config = write_config(tmp_path, steps=4)
    assert main(["train", str(config), "--quiet"]) == 0
    last = tmp_path / "run" / "tiny-LAST.safetensors"
    before = last.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_TRAINING_LOCK, str(tmp_path / "run" / ".tiny.train.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", str(config), "--resume", "--steps", "8", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert f"run is being trained into (tiny) by another densepred run (pid {holder.pid} on " in err
        assert last.read_bytes() == before
    finally:
        holder.kill()  # the lock goes with the process
        holder.wait()
    assert main(["train", str(config), "--resume", "--steps", "8", "--quiet"]) == 0
    assert last.read_bytes() != before
    assert not list((tmp_path / "run").glob(".*lock"))


def test_a_refused_first_training_leaves_no_save_dir(tmp_path):
    config = write_config(tmp_path, steps=4)
    with pytest.raises(DensePredError, match="does not exist; start without --resume"):
        densepred.train(config, resume=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_an_unfinished_densepred_output_is_refused_as_training_data(tmp_path, capsys):
    config = write_config(tmp_path, steps=4)
    with h5py.File(tmp_path / "data.h5", "a") as f:  # raw made by a densepred run that was killed
        f["raw"].attrs["densepred"] = json.dumps({"complete": False})
    assert main(["train", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "data.h5:raw is the output of a densepred run that has not finished" in err
    assert not (tmp_path / "run").exists()
    with h5py.File(tmp_path / "data.h5", "a") as f:
        f["raw"].attrs["densepred"] = json.dumps({"complete": True})
    assert main(["train", str(config), "--quiet"]) == 0


def test_a_damaged_history_stops_a_resume_in_one_line_and_a_missing_one_starts_afresh(tmp_path, capsys):
    """An edited history.csv ended a resume in a ValueError traceback."""
    config = write_config(tmp_path, steps=10)
    densepred.train(config, progress=False)
    history = tmp_path / "run" / "history.csv"
    kept = history.read_text()
    history.write_text(kept.replace("\n10,", "\nten,", 1))
    code = main(["train", str(config), "--quiet", "--resume", "--steps", "20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"densepred: error: {history}, line 2: step 'ten' is not a whole number; repair the file, or "
                   "move it away to resume with a history that starts at LAST's step"]
    history.unlink()
    assert main(["train", str(config), "--quiet", "--resume", "--steps", "20"]) == 0
    assert [row["step"] for row in read_history(history)] == [20]


def test_a_damaged_best_is_told_and_replaced_by_the_resumed_runs_next_validation(tmp_path, caplog):
    """It was replaced without a word, even by weights worse than those it held."""
    config = write_config(tmp_path, steps=10)
    densepred.train(config, progress=False)
    best = tmp_path / "run" / "tiny-BEST.safetensors"
    best.write_bytes(b"damaged")
    result = densepred.train(config, progress=False, resume=True, steps=20)
    assert f"{best} cannot be read" in caplog.text
    assert "the next validation replaces it" in caplog.text
    assert int(read_safetensors(best)[1]["step"]) == 20
    assert result.best == best
