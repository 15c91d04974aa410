"""Running tasks on a Dask cluster: connecting to one (or starting a local one), and running
a stream of tasks as futures with a bounded number in flight, retries and a named failure.

A local cluster listens on 127.0.0.1 only (scheduler, workers, nannies, dashboards);
joining a remote scheduler is the user's explicit choice. What a task computes lives in
:mod:`.blocks`; which tasks a job needs, and the record of what finished, in
:mod:`densepred.running.jobs.cluster_job`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...io.reading import reason
from ...networks.devices import resolve_device
from ...networks.memory_budget import CPU_FRACTION
from ...system import available_cores, available_ram, resident_bytes
from .blocks import BlockFailed

log = logging.getLogger("densepred")
CONNECT_TIMEOUT = "30s"  # how long to keep trying an existing scheduler

ATTEMPTS = 3  # runs of one block before the run stops
IN_FLIGHT_PER_THREAD = 2  # blocks queued per worker thread: enough to keep every worker busy


@dataclass(frozen=True)
class ClusterTarget:
    """Where a job's tasks run: a local cluster of ``workers`` processes, or the scheduler at an
    address or in a scheduler file; ``device`` decides whether local workers each get a GPU."""

    workers: int | None = None
    threads_per_worker: int | None = None
    scheduler: str | None = None
    scheduler_file: str | Path | None = None
    device: str | None = None

    @classmethod
    def of(cls, job: Any) -> ClusterTarget:
        """The target a job (:class:`densepred.running.jobs.job.PredictJob`) names."""
        return cls(job.workers, job.threads_per_worker, job.scheduler, job.scheduler_file, job.device)

    def check(self, client: Any = None) -> None:
        """Refuse, before anything is created, two ways to reach the workers or a bad count."""
        given = [name for name, value in (("a client", client), ("--workers", self.workers),
                                          ("--scheduler", self.scheduler), ("--scheduler-file", self.scheduler_file))
                 if value is not None]
        if len(given) > 1:
            raise DensePredError(f"{' and '.join(given)} exclude each other: give one way to reach the workers")
        for name, value in (("workers", self.workers), ("threads per worker", self.threads_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DensePredError(f"{name} = {value!r} is invalid; expected a positive integer")


@dataclass(frozen=True)
class Task:
    """One future's worth of work: ``fn(*args)``, named for messages by ``what``."""

    task_id: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    what: str


@contextlib.contextmanager
def connected(target: ClusterTarget, client: Any) -> Iterator[Any]:
    """The client to submit to: the caller's, or one to the cluster ``target`` names."""
    if client is not None:
        yield client
        return
    import dask
    from distributed import Client

    # a local cluster's scratch space: private, never a fixed name another user could hold
    scratch = None if target.scheduler or target.scheduler_file else tempfile.mkdtemp(prefix="densepred-dask-")
    try:
        with dask.config.set({"temporary-directory": scratch} if scratch else {}):
            connected = _client(Client, target, scratch)
            try:
                yield connected
            finally:
                cluster = connected.cluster
                connected.close()
                if cluster is not None:
                    cluster.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _client(client_class: Any, target: ClusterTarget, scratch: str | None) -> Any:
    where = target.scheduler or target.scheduler_file or "a local cluster"
    if target.scheduler_file is not None:
        _wait_for_file(Path(target.scheduler_file))
    if target.scheduler is None and target.scheduler_file is None:
        return client_class(_local(target, scratch))
    try:
        if target.scheduler is not None:
            return client_class(target.scheduler, timeout=CONNECT_TIMEOUT)
        return client_class(scheduler_file=str(target.scheduler_file), timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address at all
        raise DensePredError(f"cannot reach the Dask scheduler ({where}): {exc}") from None


def _local(target: ClusterTarget, scratch: str | None) -> Any:
    """The local cluster ``target`` asks for; a worker that does not start (too little memory,
    too many open files, a machine too loaded to answer in time) is one line, not distributed's
    traceback."""
    workers = target.workers or 1
    try:
        return local_cluster(workers, target.threads_per_worker, target.device, scratch)
    except (RuntimeError, TimeoutError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        why = f"{exc}" + (f" ({type(cause).__name__}: {cause})" if cause is not None else "")
        raise DensePredError(f"cannot start a local Dask cluster of {workers} worker(s): {why}; check that this "
                             "machine can start that many processes (memory, open files), or run without "
                             "--workers") from None


def _wait_for_file(path: Path) -> None:
    """A scheduler file may appear a little after the client starts (a batch job starting the
    scheduler beside it); after :data:`CONNECT_TIMEOUT` without it, stop."""
    deadline = time.monotonic() + int(CONNECT_TIMEOUT.removesuffix("s"))
    while not path.is_file():
        if time.monotonic() > deadline:
            raise DensePredError(f"the scheduler file {path} does not exist (waited {CONNECT_TIMEOUT}); start the "
                                 f"scheduler with: dask scheduler --scheduler-file {path}")
        time.sleep(0.2)


def worker_memory_limit(client: Any, memory_limit: int | None) -> int | None:
    """Bytes one task may use at its peak: ``memory_limit`` when given, else a share of the
    smallest worker's memory limit per task slot (pieces are planned for the smallest worker)."""
    if memory_limit is not None:
        return memory_limit
    workers = client.scheduler_info().get("workers", {}).values()
    shares = [w["memory_limit"] // max(1, w["nthreads"]) for w in workers if w.get("memory_limit")]
    if not shares:
        return None
    return resident_bytes() + int(min(shares) * CPU_FRACTION)


def local_cluster(workers: int, threads: int | None, device: str | None, scratch: str | None = None) -> Any:
    """``workers`` worker processes on this machine, one block at a time each, listening on
    127.0.0.1 only, their scratch space in ``scratch``; with a CUDA device, worker ``i`` sees
    GPU ``i`` alone."""
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
        if scratch is not None:
            options["local_directory"] = scratch
        specs[i] = {"cls": Nanny, "options": options}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.WARNING, name="densepred")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def shared(client: Any, value: Any) -> Any:
    """``value`` (a job's network) on the cluster, as a future the tasks take as an argument.

    It is a task that returns the value, not scattered data: the scheduler keeps the task, so
    when every worker that held the value is gone (killed, restarted by its nanny, preempted)
    it runs again where it is needed, where scattered data would be lost with its workers and
    every block still to run cancelled.
    """
    with warnings.catch_warnings():  # the value rides in the task: as large as the weights
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
        return client.submit(_same, value, pure=False, key=f"densepred-payload-{uuid.uuid4().hex}")


def _same(value: Any) -> Any:
    return value


def run_tasks(client: Any, tasks: Iterator[Task], on_result: Callable[..., None],
              resources: dict[str, int] | None, with_id: bool = False) -> None:
    """Run ``tasks`` as futures, at most :data:`IN_FLIGHT_PER_THREAD` per worker thread at once,
    calling ``on_result`` in this process as each finishes (``on_result(result, task_id)`` with
    ``with_id``). A failed task runs again, up to :data:`ATTEMPTS` times in all, unless its error
    is final; then the run stops, the other futures are cancelled, and the error names the task."""
    from distributed import as_completed

    running: dict[Any, tuple[Task, int]] = {}
    queue = as_completed()

    def submit(task: Task, attempt: int) -> None:
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
            result = _result(future)
            if result is _LOST:
                _retry_or_stop(future, task, attempt, submit)
            elif with_id:
                on_result(result, task.task_id)
            else:
                on_result(result)
            future.release()
            fill()
    finally:
        if running:
            client.cancel(list(running))


_LOST = object()


def _result(future: Any) -> Any:
    """The task's result, or :data:`_LOST` when it failed, was cancelled, or finished on a
    worker that died before the result came back and could not run again."""
    if future.status != "finished":
        return _LOST
    try:
        return future.result()
    except (CancelledError, OSError):  # cancelled once lost (FutureCancelledError), or a closed comm
        return _LOST


def _retry_or_stop(future: Any, task: Task, attempt: int, submit: Callable[[Task, int], None]) -> None:
    error = future.exception() if future.status == "error" else None
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


def _reason(error: BaseException | None) -> str:
    if error is None:
        return "it was lost with its worker (the worker died, or was removed from the cluster)"
    if isinstance(error, BlockFailed):
        return error.message
    if type(error).__name__ == "KilledWorker":
        return "its worker died each time it ran (out of memory, or killed)"
    return reason(error)


def check_resources(client: Any, resources: dict[str, int] | None) -> None:
    if not resources:
        return
    workers = client.scheduler_info().get("workers", {}).values()
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers):
        raise DensePredError("the device is CUDA but no worker of the cluster offers a GPU resource; start one "
                             "worker per GPU with --resources GPU=1 (and CUDA_VISIBLE_DEVICES set per worker)")


def worker_count(client: Any) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _thread_count(client: Any) -> int:
    return sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())


def tiles_per_block(value: Sequence[int] | int | None, ndim: int) -> tuple[int, ...]:
    """``--tiles-per-block``: pieces per cluster task on each axis (default 1)."""
    per_block = (value or 1,) * ndim if value is None or isinstance(value, int) else tuple(value)
    if len(per_block) != ndim or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in per_block):
        raise DensePredError(f"tiles per block {value!r} are invalid; expected a positive integer or {ndim} of them")
    return per_block


def box_text(box: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{a}:{b}" for a, b in box)
