"""Dask distributed: a cluster run equals the in-process run; workers and clients can die; resume.

Clusters here are real: worker processes of a local cluster, or a scheduler and workers
started with the ``dask`` command line, all on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.running.jobs import PredictJob, predict_to_file
from densepred.running.jobs import cluster_job as cluster_run
from tests.test_foreign_files import tiny_job

TILE = (6, 19, 17)  # output tiles of 4 x 12 x 10
BIN = Path(sys.executable).parent


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(11).random((21, 97, 83), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return tmp_path / "in.npy"


def job(config, volume, output, **options):
    defaults = {"tile": TILE, "mode": "mfp", "progress": False, "levels": 2}
    return PredictJob(config, str(volume), str(output), **{**defaults, **options})


def levels(output):
    group = zarr.open_group(output, mode="r")
    return [np.asarray(group[str(i)][:]) for i in range(len(group.attrs["ome"]["multiscales"][0]["datasets"]))]


def same_bytes(a, b):
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(levels(a), levels(b), strict=True))


def test_local_cluster_equals_the_in_process_run_and_reruns_byte_identically(config, tmp_path):
    volume = tmp_path / "small.npy"  # 75 tiles: blocks of 1-6 of them on each worker
    np.save(volume, np.random.default_rng(12).random((13, 61, 53), dtype=np.float32))
    predict_to_file(job(config, volume, tmp_path / "one.zarr"))
    (tmp_path / "model").mkdir()
    model_job = tiny_job(tmp_path / "model", 3, (29, 47, 41), mode="exact", tile=(16, 20, 20), levels=2)
    predict_to_file(model_job("one.zarr"))
    from distributed import LocalCluster

    # one cluster for all runs (densepred's own --workers clusters start in test_readme, test_newcomer_errors, ...)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        first = predict_to_file(job(config, volume, tmp_path / "a.zarr", scheduler=address, tiles_per_block=(1, 2, 3)))
        predict_to_file(job(config, volume, tmp_path / "b.zarr", scheduler=address, tiles_per_block=2))
        model = predict_to_file(model_job("two.zarr", scheduler=address, tiles_per_block=1))
    assert model.tiles > 4  # a model from elsewhere, in several blocks
    assert same_bytes(tmp_path / "model" / "one.zarr", tmp_path / "model" / "two.zarr")
    assert first.computed == first.tiles > 1
    for here, there in zip(levels(tmp_path / "one.zarr"), levels(tmp_path / "a.zarr"), strict=True):
        np.testing.assert_allclose(there, here, rtol=0, atol=1e-5)
    assert len(levels(tmp_path / "a.zarr")) == 2
    assert same_bytes(tmp_path / "a.zarr", tmp_path / "b.zarr")  # other blocks, same bytes
    attributes = zarr.open_group(tmp_path / "a.zarr", mode="r").attrs["densepred"]
    assert attributes["complete"] is True
    assert not (tmp_path / "a.zarr.densepred" / "done.log").exists()


@pytest.mark.slow
def test_labels_on_a_cluster_equal_the_in_process_labels(config, volume, tmp_path):
    predict_to_file(job(config, volume, tmp_path / "one.zarr", argmax=True, levels=3))
    predict_to_file(job(config, volume, tmp_path / "two.zarr", argmax=True, levels=3, workers=2))
    assert same_bytes(tmp_path / "one.zarr", tmp_path / "two.zarr")


@pytest.mark.slow
def test_a_default_workers_run_listens_on_loopback_only(config, volume, tmp_path, monkeypatch):
    listening: list = []
    record = cluster_run.Progress.update

    def update(self, voxels, workers=None):
        if not listening:
            for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
                listening.extend(c.laddr.ip for c in process.net_connections("inet") if c.status == "LISTEN")
        record(self, voxels, workers)

    monkeypatch.setattr(cluster_run.Progress, "update", update)
    assert main(["predict", str(config), "--input", str(volume), "--output", str(tmp_path / "o.zarr"),
                 "--tile", "6,19,17", "--workers", "2", "--quiet"]) == 0
    assert len(listening) >= 5  # the scheduler, its dashboard, two nannies, two workers
    assert set(listening) <= {"127.0.0.1", "::1"}, listening


@pytest.mark.slow
def test_a_failing_block_is_retried_then_stops_the_run_with_its_box(config, volume, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from densepred.running.executors import blocks as block_task

    calls = {"n": 0}
    original = block_task._run_block

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("stale file handle")
        return original(*args)

    monkeypatch.setattr(block_task, "_run_block", flaky)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as local, \
            Client(local) as client:
        result = predict_to_file(job(config, volume, tmp_path / "a.zarr"), client=client)
        assert result.computed == result.tiles
        predict_to_file(job(config, volume, tmp_path / "ref.zarr"))
        assert same_bytes(tmp_path / "a.zarr", tmp_path / "ref.zarr")

        def broken(*args):
            raise OSError("disk quota exceeded")

        monkeypatch.setattr(block_task, "_run_block", broken)
        with pytest.raises(DensePredError, match=r"block \d+ \(output box 0:4, 0:12, 0:10\) failed 3 "
                                                         r"times on .*disk quota exceeded.*--resume"):
            predict_to_file(job(config, volume, tmp_path / "b.zarr"), client=client)


@pytest.mark.slow  # in one process: test_reliability_files' test_15 with strict
def test_a_strict_non_finite_input_stops_at_once_naming_the_block(config, tmp_path):
    data = np.random.default_rng(3).random((21, 97, 83), dtype=np.float32)
    data[10, 50, 40] = np.nan
    np.save(tmp_path / "nan.npy", data)
    with pytest.raises(DensePredError, match=r"block \d+ .* failed on tcp://127\.0\.0\.1:\d+: .*NaN"):
        predict_to_file(job(config, tmp_path / "nan.npy", tmp_path / "o.zarr", workers=1, strict=True))


@pytest.mark.parametrize(("extra", "message"), [
    (["--output", "o.h5:pred"], "a cluster run writes an OME-Zarr output"),
    (["--output", "o.zarr", "--workers", "0"], "workers = 0 is invalid"),
    (["--output", "o.zarr", "--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler"),
])
def test_cluster_mistakes_are_one_line_exit_2(config, volume, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("densepred.running.executors.cluster.CONNECT_TIMEOUT", "1s")  # nothing listens on port 1
    args = ["predict", str(config), "--input", str(volume), "--tile", "6,19,17", "--quiet", *extra]
    if "--workers" not in extra and "--scheduler" not in extra:
        args += ["--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
    assert not list(tmp_path.glob("o.*"))


def test_workers_and_a_scheduler_exclude_each_other(config, volume, tmp_path, capsys):
    assert main(["predict", str(config), "--input", str(volume), "--output", str(tmp_path / "o.zarr"),
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "exclude each other" in capsys.readouterr().err


# -- a cluster started with the dask command line -------------------------------------------------

@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-threaded workers (each under a nanny), on 127.0.0.1."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", scheduler_file],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    _wait_for(scheduler_file.exists, 60, "the scheduler file")
    for _ in range(2):
        processes.append(subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nthreads",
                                           "1", "--host", "127.0.0.1", "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file)) as client:
        client.wait_for_workers(2, timeout=60)
        yield client, scheduler_file, processes[1:]
    for process in processes:
        process.kill()
        process.wait()


def _wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds} s for {what}")
        time.sleep(0.05)


def _done_lines(output):
    path = Path(str(output) + ".densepred") / "done.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow  # 14-50 s, by how soon Dask replaces the worker
def test_a_worker_killed_mid_run_loses_no_block_and_records_none_twice(config, volume, tmp_path, dask_cluster,
                                                                      monkeypatch):
    client, _, workers = dask_cluster
    reference = tmp_path / "ref.zarr"
    predict_to_file(job(config, volume, reference, threads_per_worker=1), client=client)
    recorded: list[int] = []
    append = cluster_run.DoneLog.append

    def record(self, tile_id):
        if Path(self._file.name).name == "done.log":  # not a pyramid level's log
            recorded.append(tile_id)
        append(self, tile_id)

    monkeypatch.setattr(cluster_run.DoneLog, "append", record)
    output = tmp_path / "o.zarr"

    killed_at: list[int] = []

    def kill_a_worker():
        _wait_for(lambda: _done_lines(output) >= 3, 120, "three tiles")
        victim = psutil.Process(workers[0].pid).children(recursive=True)[-1]  # the worker under the nanny
        victim.send_signal(signal.SIGKILL)
        killed_at.append(len(recorded))

    import threading

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    result = predict_to_file(job(config, volume, output, threads_per_worker=1), client=client)
    killer.join()
    assert killed_at
    assert 3 <= killed_at[0] < result.tiles
    assert sorted(recorded) == list(range(result.tiles))  # each tile recorded once
    assert same_bytes(output, reference)


@pytest.mark.slow
def test_client_killed_mid_run_then_resume_is_byte_identical(config, volume, tmp_path, dask_cluster):
    client, scheduler_file, _ = dask_cluster
    reference = tmp_path / "ref.zarr"
    predict_to_file(job(config, volume, reference, threads_per_worker=1), client=client)
    output = tmp_path / "o.zarr"
    command = [BIN / "densepred", "predict", str(config), "--input", str(volume), "--output", str(output),
               "--tile", "6,19,17", "--mode", "mfp", "--levels", "2", "--threads-per-worker", "1",
               "--scheduler-file", str(scheduler_file), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: _done_lines(output) >= 3 or process.poll() is not None, 120, "three tiles")
    process.send_signal(signal.SIGKILL)
    process.wait()
    record = json.loads((Path(str(output) + ".densepred") / "run.json").read_text())
    assert record["complete"] is False
    result = predict_to_file(job(config, volume, output, threads_per_worker=1, resume=True), client=client)
    assert result.skipped >= 3
    assert result.computed + result.skipped == result.tiles
    assert same_bytes(output, reference)


@pytest.mark.slow  # 6 s: a cluster of its own, started and stopped twice
def test_the_network_outlives_every_worker_that_held_it():
    """A job's network goes to the workers as a task, not scattered data: with every worker that
    held it killed (and restarted by its nanny), the blocks still to run get it again."""
    from densepred.running.executors.cluster import ClusterTarget, connected, shared

    with connected(ClusterTarget(workers=2, threads_per_worker=1), None) as client:
        network = shared(client, list(range(10)))
        assert client.submit(sum, network, pure=False).result(timeout=60) == 45
        for pid in client.run(os.getpid).values():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the nannies start new workers, which know nothing yet
            time.sleep(0.2)
            if len(client.scheduler_info()["workers"]) == 2 and not client.who_has(network)[network.key]:
                break
        assert client.submit(sum, network, pure=False).result(timeout=60) == 45
