"""Reading, computing and writing tiles at the same time.

::

    reader thread     read batch k+2 -> queue (prefetch)
    caller            compute batch k+1
    writer threads    finish and write batches k, k-1 <- a queue each (pending, shared out)

Memory in flight is bounded: at most ``prefetch`` input batches wait to be computed and
``pending`` results (over all writers) wait to be written, besides the one being worked on
at each stage. Reading and writing release the GIL in NumPy, h5py, zarr's codecs, torch and
the OS, so a slow disk does not leave the CPU or GPU idle, and the writers' work (a softmax,
encoding, compression) runs beside the next batch's compute on the other cores.

Each batch goes to one writer (``writer_of``), which writes its batches in order: batches
that touch the same output storage (a stream's slabs of one tile) go to the same writer, so
no two threads ever write one shard. A batch's result may also be cut into ``parts`` (a
stream's slab into columns of whole shards), the ``i``-th part to the writer ``i`` places
after the batch's own: each part of a key keeps its writer, and a slab's work is shared out.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

Batch = TypeVar("Batch")
_END = object()
POLL_SECONDS = 0.2


def run_pipeline(batches: Iterable[Batch], read: Callable[[Batch], Any], compute: Callable[[Any], Any],
                 write: Callable[[Batch, Any], None], *, prefetch: int = 2, pending: int = 2, writers: int = 1,
                 writer_of: Callable[[Batch], Hashable] | None = None,
                 parts: Callable[[Batch, Any], Sequence[tuple[Batch, Any]]] | None = None) -> None:
    """``write(batch, compute(read(batch)))`` for every batch, with reading and writing in threads.

    ``writers`` threads write; ``writer_of(batch)`` is a key, and batches of one key are
    written by one thread in order (default: every batch its own key, dealt out in turn).
    ``parts(batch, result)`` cuts a result into ``(batch, result)`` pairs, each written as if it
    were a batch of its own; part ``i`` goes to the writer ``i`` places after the batch's.
    The first error in any stage stops the others and is raised here; a ``KeyboardInterrupt``
    stops reading, and the batches already computed are still written before it propagates.
    """
    writers = max(1, writers)
    inputs: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    results = [queue.Queue(maxsize=max(pending // writers, 1)) for _ in range(writers)]
    stop = threading.Event()
    errors: list[BaseException] = []
    route = _router(writers, writer_of)

    def reader() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                if not _put(inputs, (batch, read(batch)), stop):
                    return
        except BaseException as exc:  # handed to the caller
            errors.append(exc)
            stop.set()
        finally:
            _put(inputs, _END, stop, force=True)

    def writer(own: queue.Queue) -> None:
        try:
            while (item := own.get()) is not _END:
                if errors:
                    continue  # drain without writing after a failure elsewhere
                write(*item)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            _drain(own)

    reading = threading.Thread(target=reader, name="densepred-reader", daemon=True)
    writing = [threading.Thread(target=writer, args=(own,), name=f"densepred-writer-{i}", daemon=True)
               for i, own in enumerate(results)]
    for thread in (reading, *writing):
        thread.start()
    try:
        while True:
            item = _get(inputs, errors)
            if item is _END or item is None:
                break
            batch, data = item
            if not _hand_out(batch, compute(data), results, route(batch), parts, stop):
                break
    except BaseException:
        stop.set()
        raise
    finally:
        for own, thread in zip(results, writing, strict=True):
            _put(own, _END, stop, force=True, consumer=thread)
        _drain(inputs)
        for thread in (reading, *writing):
            thread.join()
    if errors:
        raise errors[0]


def _hand_out(batch: Any, result: Any, results: Sequence[queue.Queue], first: int,
              parts: Callable[[Any, Any], Sequence[tuple[Any, Any]]] | None, stop: threading.Event) -> bool:
    """Queue a batch's result (or each of its parts, from writer ``first`` on); False once stopped."""
    shares = [(batch, result)] if parts is None else parts(batch, result)
    return all(_put(results[(first + i) % len(results)], share, stop) for i, share in enumerate(shares))


def _router(writers: int, writer_of: Callable[[Any], Hashable] | None) -> Callable[[Any], int]:
    """batch -> the index of its writer: a key keeps its writer; new keys are dealt out in turn."""
    if writers == 1:
        return lambda batch: 0
    turn = itertools.cycle(range(writers))
    assigned: dict[Hashable, int] = {}

    def route(batch: Any) -> int:
        if writer_of is None:
            return next(turn)
        key = writer_of(batch)
        if key not in assigned:
            assigned.clear()  # keys arrive in order; only the current one is needed
            assigned[key] = next(turn)
        return assigned[key]

    return route


def _put(q: queue.Queue, item: Any, stop: threading.Event, force: bool = False,
         consumer: threading.Thread | None = None) -> bool:
    """Put unless stopped. ``force`` always puts: it waits while ``consumer`` still takes items
    and otherwise (after a stop, or with no consumer thread) makes room by dropping one."""
    while True:
        if stop.is_set() and not force:
            return False
        try:
            q.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            if force and ((consumer is None and stop.is_set()) or (consumer is not None and not consumer.is_alive())):
                _drain_one(q)


def _get(q: queue.Queue, errors: Sequence[BaseException]) -> Any:
    while True:
        if errors:
            return None
        try:
            return q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue


def _drain(q: queue.Queue) -> None:
    while _drain_one(q):
        pass


def _drain_one(q: queue.Queue) -> bool:
    try:
        q.get_nowait()
        return True
    except queue.Empty:
        return False
