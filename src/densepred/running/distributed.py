"""``densepred predict --workers N`` (a local cluster) or ``--scheduler ADDRESS`` (any Dask cluster).

The job is checked and planned and its output created exactly as in one process
(:mod:`.file_job`); the tiles are then grouped into blocks (:class:`~densepred.geometry.BlockPlan`,
whole output shards each) and submitted as Dask futures, a bounded number at a time. Each
block reads its own input window and halo from storage (no halo exchange between workers),
writes its shards, makes them durable and returns (:mod:`.block_task`). Only this process,
the client, writes the run record: a block's tiles are recorded after its task succeeded,
so the record never names data that is not on disk, and a resume, in one process or on a
cluster, computes only what is missing. A block lost with a dying worker is run again; one
that fails :data:`ATTEMPTS` times, or with an error a retry cannot cure, stops the run with
the block, its box and the worker's error.

A local cluster listens on 127.0.0.1 only (scheduler, workers, nannies, dashboards);
joining a remote scheduler is the user's explicit choice.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import DensePredError
from ..geometry import BlockPlan, level_shard, shard_boxes, source_box
from ..system import available_cores, available_ram, resident_bytes
from .block_task import BlockFailed, BlockJob, BlockResult, NetPayload, run_block, run_level_shard
from .devices import resolve_device
from .file_job import JobResult, PredictJob, _finish, _new_output, _prepare, _reopen, _Setup, _write_error
from .input_checks import NonFinite
from .memory_budget import CPU_FRACTION
from .progress import Progress
from .pyramid import DoneLog, level_log, read_done

log = logging.getLogger("densepred")
CONNECT_TIMEOUT = "30s"  # how long to keep trying an existing scheduler

ATTEMPTS = 3  # runs of one block before the run stops
IN_FLIGHT_PER_THREAD = 2  # blocks queued per worker thread: enough to keep every worker busy


@dataclass(frozen=True)
class _Task:
    """One future's worth of work: ``fn(*args)``, named for messages by ``what``."""

    task_id: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    what: str


def uses_cluster(job: PredictJob) -> bool:
    return job.workers is not None or job.scheduler is not None or job.scheduler_file is not None


def predict_on_cluster(job: PredictJob, client: Any = None) -> JobResult:
    """Run ``job`` on ``client``'s cluster, or on the one the job names (a local one for ``workers``)."""
    _check_cluster_job(job, client)
    with _connected(job, client) as connected:
        job = replace(job, memory_limit=_worker_memory_limit(job, connected))
        setup, previous = _prepare(job)
        if setup.out_spec.kind != "zarr":
            raise DensePredError(f"a cluster run writes an OME-Zarr output (out.zarr), not {setup.out_spec}: "
                                 "HDF5, TIFF and NumPy files cannot take writes from several processes")
        if previous is not None and previous.get("complete"):
            log.warning("%s is already complete; nothing to do", setup.out_spec)
            return setup.result(0, len(setup.plan))
        output, done = (_reopen(setup), read_done(setup.record_dir)) if previous else (_new_output(setup, job), set())
        skipped = len(done)
        computed = _run_blocks(connected, job, setup, done)
        if setup.layout is not None and len(setup.layout.levels) > 1:
            _run_pyramid(connected, job, setup)
        _finish(setup, output)
    return setup.result(computed, skipped)


def _check_cluster_job(job: PredictJob, client: Any) -> None:
    given = [name for name, value in (("a client", client), ("--workers", job.workers),
                                      ("--scheduler", job.scheduler), ("--scheduler-file", job.scheduler_file))
             if value is not None]
    if len(given) > 1:
        raise DensePredError(f"{' and '.join(given)} exclude each other: give one way to reach the workers")
    for name, value in (("workers", job.workers), ("threads per worker", job.threads_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DensePredError(f"{name} = {value!r} is invalid; expected a positive integer")


@contextlib.contextmanager
def _connected(job: PredictJob, client: Any) -> Iterator[Any]:
    """The client to submit to: the caller's, or one to the cluster the job names."""
    if client is not None:
        yield client
        return
    from distributed import Client

    try:
        if job.scheduler is not None:
            connected = Client(job.scheduler, timeout=CONNECT_TIMEOUT)
        elif job.scheduler_file is not None:
            connected = Client(scheduler_file=str(job.scheduler_file), timeout=CONNECT_TIMEOUT)
        else:
            connected = Client(local_cluster(job.workers or 1, job.threads_per_worker, job.device))
    except OSError as exc:
        where = job.scheduler or job.scheduler_file or "a local cluster"
        raise DensePredError(f"cannot reach the Dask scheduler ({where}): {exc}") from None
    try:
        yield connected
    finally:
        cluster = connected.cluster
        connected.close()
        if cluster is not None:
            cluster.close()


def local_cluster(workers: int, threads: int | None, device: str | None) -> Any:
    """``workers`` worker processes on this machine, one block at a time each, listening on
    127.0.0.1 only; with a CUDA device, worker ``i`` sees GPU ``i`` alone."""
    from distributed import Nanny, Scheduler, SpecCluster

    cuda = resolve_device(device).type == "cuda"
    if cuda and workers > _gpu_count():
        raise DensePredError(f"--workers {workers} with --device cuda needs {workers} GPUs; this machine has "
                             f"{_gpu_count()}")
    cores = available_cores()
    threads = threads or max(1, cores // workers)
    memory = (resident_bytes() + available_ram()) // workers
    specs = {}
    for i in range(workers):
        env = {"OMP_NUM_THREADS": str(threads)}
        if cuda:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        options = {"nthreads": 1, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "env": env,
                   "memory_limit": memory, "resources": {"GPU": 1} if cuda else {}, "silence_logs": logging.WARNING}
        specs[i] = {"cls": Nanny, "options": options}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.WARNING, name="densepred")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _worker_memory_limit(job: PredictJob, client: Any) -> int | None:
    """Bytes one block may use at its peak: the job's limit, else a share of the smallest
    worker's memory limit per task slot (tiles are planned for the smallest worker)."""
    if job.memory_limit is not None:
        return job.memory_limit
    workers = client.scheduler_info().get("workers", {}).values()
    shares = [w["memory_limit"] // max(1, w["nthreads"]) for w in workers if w.get("memory_limit")]
    if not shares:
        return None
    return resident_bytes() + int(min(shares) * CPU_FRACTION)


# -- blocks ---------------------------------------------------------------------------------------

def _run_blocks(client: Any, job: PredictJob, setup: _Setup, done: set[int]) -> int:
    """Submit every block with a missing tile and record each finished one; returns tiles computed."""
    plan = setup.plan
    per_block = _tiles_per_block(job.tiles_per_block, len(plan.output_tile))
    blocks = BlockPlan.create(plan.output_shape, plan.output_tile, per_block, plan.fov)
    payload = client.scatter(NetPayload.from_files(setup.cfg, setup.weights), broadcast=True, hash=False)
    network = setup.cfg.network
    block_job = BlockJob(setup.input_spec, setup.out_spec.resolved(), network.in_channels, network.dims, plan,
                         blocks, setup.engine_mode, setup.batch_size, setup.encoding, job.device,
                         setup.shift, job.strict, job.threads_per_worker)
    resources = {"GPU": 1} if resolve_device(job.device).type == "cuda" else None
    _check_resources(client, resources)

    def tasks() -> Iterator[_Task]:
        for block_id, box in blocks.boxes():
            ids = [plan.tile_id(plan.tile_at(index)) for index in blocks.tile_indices(block_id)]
            if not all(i in done for i in ids):
                owned = [i for i in ids if i in done]
                yield _Task(block_id, run_block, (payload, block_job, block_id, owned),
                            f"block {block_id} (output box {_box_text(box)})")

    missing = sum(math.prod(t.owned_shape) for t in plan.tiles() if plan.tile_id(t) not in done)
    progress = Progress(missing, f"predict ({setup.engine_mode}, {len(blocks)} blocks)", job.progress)
    non_finite = NonFinite(setup.shift, strict=job.strict)
    done_log, computed = DoneLog(setup.record_dir), 0

    def record(result: BlockResult) -> None:
        nonlocal computed
        new = [i for i in result.tile_ids if i not in done]
        for tile_id in new:
            done_log.append(tile_id)
        done.update(new)
        computed += len(new)
        _merge_non_finite(non_finite, result)
        progress.update(result.voxels, _worker_count(client))

    try:
        run_tasks(client, tasks(), record, resources)
    except OSError as exc:
        raise _write_error(exc, setup.out_spec, f"{len(done)} of {len(plan)} tiles done") from None
    finally:
        done_log.close()
        progress.close()
    non_finite.report()
    return computed


def _run_pyramid(client: Any, job: PredictJob, setup: _Setup) -> None:
    """Levels 1.. of the OME-Zarr pyramid, shard by shard on the workers, level after level."""
    levels, label, spec = setup.layout.levels, setup.encoding.argmax, setup.out_spec.resolved()
    for level in levels[1:]:
        done = read_done(setup.record_dir, level_log(level.index))
        below = levels[level.index - 1].shape
        shard = level_shard(setup.layout.tile, level.shape)
        todo = [_Task(shard_id, run_level_shard,
                      (spec, level.index, box, source_box(box, level.step, below), level.step, label),
                      f"pyramid level {level.index} shard {shard_id} (box {_box_text(box)})")
                for shard_id, box in shard_boxes(level.shape, shard) if shard_id not in done]
        progress = Progress(sum(math.prod(b - a for a, b in t.args[2]) for t in todo), f"pyramid level {level.index}",
                            job.progress)
        done_log = DoneLog(setup.record_dir, level_log(level.index))

        def record(voxels: int, shard_id: int, log_: DoneLog = done_log, bar: Progress = progress) -> None:
            log_.append(shard_id)
            bar.update(voxels, _worker_count(client))

        try:
            run_tasks(client, iter(todo), record, None, with_id=True)
        except OSError as exc:
            raise _write_error(exc, setup.out_spec, "all tiles done, the pyramid levels are not") from None
        finally:
            done_log.close()
            progress.close()


def run_tasks(client: Any, tasks: Iterator[_Task], on_result: Callable[..., None],
              resources: dict[str, int] | None, with_id: bool = False) -> None:
    """Run ``tasks`` as futures, at most :data:`IN_FLIGHT_PER_THREAD` per worker thread at once,
    calling ``on_result`` in this process as each finishes (``on_result(result, task_id)`` with
    ``with_id``). A failed task runs again, up to :data:`ATTEMPTS` times in all, unless its error
    is final; then the run stops, the other futures are cancelled, and the error names the task."""
    from distributed import as_completed

    running: dict[Any, tuple[_Task, int]] = {}
    queue = as_completed()

    def submit(task: _Task, attempt: int) -> None:
        future = client.submit(task.fn, *task.args, pure=False, resources=resources)
        running[future] = (task, attempt)
        queue.add(future)

    def fill() -> None:
        limit = max(2, IN_FLIGHT_PER_THREAD * _thread_count(client))
        while len(running) < limit and (task := next(tasks, None)) is not None:
            submit(task, 1)

    fill()
    try:
        for future in queue:
            task, attempt = running.pop(future)
            if future.status == "finished":
                result = future.result()
                if with_id:
                    on_result(result, task.task_id)
                else:
                    on_result(result)
            else:
                _retry_or_stop(future, task, attempt, submit)
            future.release()
            fill()
    finally:
        if running:
            client.cancel(list(running))


def _retry_or_stop(future: Any, task: _Task, attempt: int, submit: Callable[[_Task, int], None]) -> None:
    error = future.exception()
    worker = getattr(error, "worker", "a worker that died")
    final = getattr(error, "final", False)
    if not final and attempt < ATTEMPTS:
        log.warning("%s failed on %s (attempt %d of %d): %s; running it again", task.what, worker, attempt,
                    ATTEMPTS, _reason(error))
        submit(task, attempt + 1)
        return
    tries = "" if final else f" {attempt} times"
    raise DensePredError(f"{task.what} failed{tries} on {worker}: {_reason(error)}; the run stopped, and "
                         "--resume continues it once the cause is fixed")


def _reason(error: BaseException) -> str:
    if isinstance(error, BlockFailed):
        return error.message
    if type(error).__name__ == "KilledWorker":
        return "its worker died each time it ran (out of memory, or killed)"
    return f"{type(error).__name__}: {error}"


# -- helpers --------------------------------------------------------------------------------------

def _tiles_per_block(value: Sequence[int] | int | None, ndim: int) -> tuple[int, ...]:
    per_block = (value or 1,) * ndim if value is None or isinstance(value, int) else tuple(value)
    if len(per_block) != ndim or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in per_block):
        raise DensePredError(f"tiles per block {value!r} are invalid; expected a positive integer or {ndim} of them")
    return per_block


def _merge_non_finite(total: NonFinite, result: BlockResult) -> None:
    if result.non_finite:
        total.count += result.non_finite
        total.first = total.first or result.first_non_finite


def _check_resources(client: Any, resources: dict[str, int] | None) -> None:
    if not resources:
        return
    workers = client.scheduler_info().get("workers", {}).values()
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers):
        raise DensePredError("the device is CUDA but no worker of the cluster offers a GPU resource; start one "
                             "worker per GPU with --resources GPU=1 (and CUDA_VISIBLE_DEVICES set per worker)")


def _worker_count(client: Any) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _thread_count(client: Any) -> int:
    return sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())


def _box_text(box: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{a}:{b}" for a, b in box)
