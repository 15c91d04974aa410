"""Reading, computing and writing tiles at the same time.

::

    reader thread   read batch k+2 -> queue (prefetch)
    caller          compute batch k+1
    writer thread   write batch k  <- queue (pending)

Memory in flight is bounded: at most ``prefetch`` input batches wait to be computed and
``pending`` result batches wait to be written, besides the one being worked on at each
stage. Reading and writing release the GIL in NumPy, h5py, zarr's codecs and the OS, so a
slow disk does not leave the CPU or GPU idle.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

Batch = TypeVar("Batch")
_END = object()
POLL_SECONDS = 0.2


def run_pipeline(batches: Iterable[Batch], read: Callable[[Batch], Any], compute: Callable[[Any], Any],
                 write: Callable[[Batch, Any], None], *, prefetch: int = 2, pending: int = 2) -> None:
    """``write(batch, compute(read(batch)))`` for every batch, with reading and writing in threads.

    Batches are written in order. The first error in any stage stops the others and is raised
    here; a ``KeyboardInterrupt`` stops reading, and the batches already computed are still
    written before it propagates.
    """
    inputs: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    results: queue.Queue = queue.Queue(maxsize=max(pending, 1))
    stop = threading.Event()
    errors: list[BaseException] = []

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

    def writer() -> None:
        try:
            while (item := results.get()) is not _END:
                if errors:
                    continue  # drain without writing after a failure elsewhere
                write(*item)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            _drain(results)

    threads = [threading.Thread(target=reader, name="densepred-reader", daemon=True),
               threading.Thread(target=writer, name="densepred-writer", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = _get(inputs, errors)
            if item is _END or item is None:
                break
            batch, data = item
            result = compute(data)
            if not _put(results, (batch, result), stop):
                break
    except BaseException:
        stop.set()
        raise
    finally:
        _put(results, _END, stop, force=True, consumer=threads[1])
        _drain(inputs)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


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
