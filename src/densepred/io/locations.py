"""Where a folder of files lies: on disk, or at an HTTP(S) URL (a web server, a public S3 or
Google Cloud bucket by its HTTPS address), read whole or by byte ranges. The precomputed reader
reads through it, so a volume in a bucket reads as the same volume on disk does.

Buckets are read as neuroglancer reads them without credentials: ``s3://BUCKET/KEY`` at
``https://BUCKET.s3.amazonaws.com/KEY`` and ``gs://BUCKET/KEY`` at
``https://storage.googleapis.com/BUCKET/KEY`` (:func:`public_url`). A read that fails because the
server is busy or the connection was lost (:func:`transient`) may succeed when tried again; a
refusal (:func:`refused`) will not.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import one_line

BUCKETS = {"s3": "https://{bucket}.s3.amazonaws.com/{key}", "gs": "https://storage.googleapis.com/{bucket}/{key}"}
BUSY = frozenset({408, 429, 500, 502, 503, 504})  # timeouts, S3's SlowDown, GCS's rate limit, a restarting server
RETRIES = 4  # a request tried again after a transient failure, first after FIRST_WAIT seconds, then twice as long
FIRST_WAIT = 0.5
CONNECT_SECONDS, SILENT_SECONDS = 30.0, 60.0  # a request fails (and is tried again) after so long without an answer

log = logging.getLogger("densepred")


class Location:
    """A folder: ``where`` is a path, or a URL starting with ``http://`` or ``https://``."""

    def __init__(self, where: str | Path):
        self.where = str(where).rstrip("/") if is_url(where) else Path(where)

    @property
    def remote(self) -> bool:
        return isinstance(self.where, str)

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.where}/{name}" if self.remote else self.where / name)

    @property
    def parent(self) -> Location:
        return Location(self.where.rsplit("/", 1)[0] if self.remote else self.where.parent)

    def __str__(self) -> str:
        return str(self.where)

    def read(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes of file ``name`` in this folder, or those from ``start`` to ``end``;
        FileNotFoundError where there is none."""
        if self.remote:
            data = http_files().cat_file(f"{self.where}/{name}", start=start, end=end)
            if start is not None and end is not None and len(data) > end - start:  # a server that ignores Range
                data = data[start:end]  # sends the whole file: correct, but each range costs the file
            return data
        with open(self.where / name, "rb") as f:
            f.seek(start or 0)
            return f.read() if end is None else f.read(end - (start or 0))


def as_location(where: str | Path | Location) -> Location:
    return where if isinstance(where, Location) else Location(where)


def is_url(where: Any) -> bool:
    return isinstance(where, str) and where.lower().startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """``url`` with an ``s3://`` or ``gs://`` bucket written as the HTTPS address it answers
    anonymously at; other URLs as they are."""
    parts = urlsplit(url)
    form = BUCKETS.get(parts.scheme.lower())
    return url if form is None else form.format(bucket=parts.netloc, key=parts.path.lstrip("/"))


def http_status(error: BaseException) -> int | None:
    """The HTTP status a failed request was answered with (aiohttp's ``ClientResponseError``)."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def failure(error: BaseException) -> str:
    """A failed request as a few words: its HTTP status, or the exception."""
    status = http_status(error)
    if status is not None:
        return " ".join(f"HTTP {status} {getattr(error, 'message', '')}".split())
    if isinstance(error, TimeoutError) and not str(error).strip():
        return f"{type(error).__name__}: no answer for {SILENT_SECONDS:g} s"
    return one_line(error)


def refused(error: BaseException) -> bool:
    """Whether the server refused access (401, 403). A read of a file takes a 403 as "not
    there" instead (:func:`http_files`): S3 answers so for a key that is not there where
    listing the bucket is not allowed."""
    return http_status(error) in (401, 403)


def transient(error: BaseException) -> bool:
    """Whether a remote read failed in a way that trying again may mend: the server busy or
    restarting, the connection lost or timed out."""
    if http_status(error) in BUSY or isinstance(error, ConnectionError | TimeoutError):
        return True
    import aiohttp

    if isinstance(error, aiohttp.ClientConnectorError):  # no server there (refused, unknown host): not transient
        return False
    return isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)


def server_failed(error: BaseException) -> bool:
    """Whether a request over HTTP(S) failed by the server's answer or the connection, for good
    (:func:`refused`) or each time it was tried (:func:`transient`): not a damaged file."""
    over_http = http_status(error) is not None or type(error).__module__.partition(".")[0] == "aiohttp"
    return over_http and (refused(error) or transient(error))


def zarr_store(url: str) -> Any:
    """A read-only zarr store at ``url`` whose reads are tried again after transient failures."""
    from zarr.storage import FsspecStore

    return FsspecStore(fs=http_files(asynchronous=True), path=url, read_only=True)


@functools.cache
def http_files(asynchronous: bool = False) -> Any:
    """fsspec's HTTP file system, trying each read again after a transient failure."""
    from fsspec.implementations.http import HTTPFileSystem

    class PatientHTTP(HTTPFileSystem):
        opened: Any = None  # the aiohttp session, closed at exit

        async def set_session(self) -> Any:
            self.opened = await super().set_session()
            return self.opened

        async def _cat_file(self, url: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> Any:
            for attempt in range(RETRIES + 1):
                try:
                    return await super()._cat_file(url, start=start, end=end, **kwargs)
                except Exception as exc:
                    if http_status(exc) == 403:  # S3's answer for a key not there where listing is not allowed
                        raise FileNotFoundError(f"{url}: HTTP 403 Forbidden (not there, or not public: densepred "
                                                "reads without credentials)") from None
                    if attempt == RETRIES or not transient(exc) or not threading.main_thread().is_alive():
                        raise  # the last try, a lasting failure, or the process is exiting (its session closed)
                    wait = FIRST_WAIT * 2 ** attempt
                    log.warning("reading %s failed (%s); trying again in %g s", url, failure(exc), wait)
                    await asyncio.sleep(wait)
            raise AssertionError("unreachable")  # pragma: no cover

    import aiohttp

    # aiohttp's own limit is 5 minutes for the whole request: a stalled connection would hold a
    # reader that long each try, where a connection silent for a minute is as good as lost
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS, sock_read=SILENT_SECONDS)
    files = PatientHTTP(asynchronous=asynchronous, client_kwargs={"timeout": timeout})
    if asynchronous:  # fsspec closes the session of a synchronous one only; aiohttp warns of one left open
        atexit.register(lambda: files.opened is None or HTTPFileSystem.close_session(None, files.opened))
    return files


__all__ = ["Location", "as_location", "failure", "http_files", "http_status", "is_url", "public_url", "refused",
           "server_failed", "transient", "zarr_store"]
