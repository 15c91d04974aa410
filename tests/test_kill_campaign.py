"""Kill anywhere: `densepred predict` of densepred's own net (MFP tiles) and of a model from
elsewhere (`--model`, exact and blend) killed with SIGKILL at seeded random
moments, then resumed with another thread count, equals the uninterrupted run with no voxel
unwritten. The default run kills each path once; `make test-slow` kills each 20 times. A run on
a local Dask cluster killed whole (client, scheduler and workers, as a batch system cancels a
job) after its first finished block resumes in one process to the same result."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from safetensors.torch import save_file

from tests.conftest import make_config
from tests.test_foreign import trained_looking
from tests.test_foreign_files import SOURCE

MODES = {"exact": ["--mode", "exact", "--tile", "16,24,24"],  # a model from elsewhere
         "blend": ["--mode", "blend", "--tile", "12,16,16", "--overlap", "0.5"],
         "own": ["--mode", "mfp", "--tile", "10,29,29", "--mirror"]}  # densepred's own net (conftest's)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    (folder / "tiny.py").write_text(SOURCE)
    from densepred.networks.loading import load_model

    model = trained_looking(load_model(f"{folder / 'tiny.py'}:Tiny"), seed=11).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "tiny.safetensors")
    np.save(folder / "in.npy", np.random.default_rng(29).random((40, 88, 72), dtype=np.float32))
    make_config(folder)
    return folder


def command(folder, output, mode, *extra):
    net = ([str(folder / "stream.toml")] if mode == "own" else
           ["--model", f"{folder / 'tiny.py'}:Tiny", "--weights", str(folder / "tiny.safetensors")])
    return [sys.executable, "-m", "densepred", "predict", *net, "--input", str(folder / "in.npy"),
            "--output", str(folder / output), "--levels", "2", "--quiet", *MODES[mode], *extra]


def threads(n):
    return {**os.environ, "OMP_NUM_THREADS": str(n)}


def level(path, index=0):
    return np.asarray(zarr.open_group(path, mode="r")[str(index)][:])


def campaign(folder, mode, kills, seed):
    whole = folder / f"whole-{mode}.zarr"
    if not whole.exists():
        subprocess.run(command(folder, whole.name, mode), check=True, env=threads(2))
    expected = [level(whole, i) for i in (0, 1)]
    rng = random.Random(seed)
    record = folder / f"cut-{mode}.zarr.densepred"
    for kill in range(kills):
        victim = subprocess.Popen(command(folder, f"cut-{mode}.zarr", mode, "--overwrite"), env=threads(2))
        deadline = time.monotonic() + 120
        while not (record / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 2.5))  # anywhere: the probe, a window, a slab, the pyramid, the mark
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        resumed = subprocess.run(command(folder, f"cut-{mode}.zarr", mode, "--resume"), check=False, env=threads(1),
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, f"kill {kill}: {resumed.stderr}"
        for index, values in enumerate(expected):
            got = level(folder / f"cut-{mode}.zarr", index)
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, values, rtol=0, atol=1e-6, err_msg=f"kill {kill}, level {index}")


# 12-13 s each: make test-slow (with test_predict_files' kill -9). The default run crashes
# model runs at chosen writes and resumes them (test_foreign_files' test_a_crash_then_resume_is_byte_identical)
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "blend", "own"])
def test_a_run_killed_once_resumes_to_the_same_result(files, mode):
    campaign(files, mode, kills=1, seed={"exact": 1, "blend": 2, "own": 3}[mode])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "blend", "own"])
def test_a_run_killed_twenty_times_resumes_to_the_same_result(files, mode):
    campaign(files, mode, kills=20, seed=20261204)


def cluster_campaign(folder, mode, kills, seed):
    """Kill a 2-worker cluster run whole (client, scheduler, workers) ``kills`` times, each after
    a seeded random wait once its first block is recorded, resuming it on the cluster with another
    block size in between; finish in one process. Returns the output's name."""
    whole = folder / f"whole-{mode}.zarr"
    if not whole.exists():
        subprocess.run(command(folder, whole.name, mode), check=True, env=threads(2))
    output, rng, interrupted = f"cluster-{mode}.zarr", random.Random(seed), 0
    done_log = folder / f"{output}.densepred" / "done.log"
    for kill in range(kills):
        start = ["--overwrite"] if kill == 0 else ["--resume"]
        victim = subprocess.Popen(command(folder, output, mode, "--workers", "2", "--threads-per-worker", "1",
                                          "--block", str(1 + kill % 2), *start),
                                  env=threads(1), start_new_session=True)
        deadline = time.monotonic() + 120
        while not (done_log.exists() and done_log.read_text().strip()) and time.monotonic() < deadline:
            if victim.poll() is not None:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 1.5) if kill else 0)
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)  # the whole job: client, scheduler, workers
        victim.wait()
        if json.loads((done_log.parent / "run.json").read_text())["complete"]:
            break
        interrupted += 1
    assert interrupted, "no run was killed before it finished"
    resumed = subprocess.run(command(folder, output, mode, "--resume"), check=False, env=threads(2),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for index in (0, 1):
        got, expected = level(folder / output, index), level(whole, index)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"level {index}")


@pytest.mark.slow  # 12-13 s; test_foreign_files resumes a model's cluster run in the default run
@pytest.mark.parametrize("mode", ["exact", "blend", "own"])
def test_a_cluster_run_killed_after_its_first_block_resumes_in_one_process(files, mode):
    cluster_campaign(files, mode, kills=1, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "blend", "own"])
def test_a_cluster_run_killed_twenty_times_resumes_to_the_same_result(files, mode):
    cluster_campaign(files, mode, kills=20, seed=20261204)
