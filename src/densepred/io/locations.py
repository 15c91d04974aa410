"""Where a folder of files lies: on disk, or at an HTTP(S) URL (a web server, a public S3 or
Google Cloud bucket by its HTTPS address), read whole or by byte ranges. The precomputed reader
reads through it, so a volume in a bucket reads as the same volume on disk does."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


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
            data = _http().cat_file(f"{self.where}/{name}", start=start, end=end)
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


@functools.cache
def _http() -> Any:
    import fsspec

    return fsspec.filesystem("http")


__all__ = ["Location", "as_location", "is_url"]
