"""Probed tiling contracts kept on disk, so a model is probed once per machine, not per run.

``$XDG_CACHE_HOME/densepred/contracts/<key>.json`` (default ``~/.cache``); the key hashes the
model's class and weights, the probe's arguments and :data:`PROBE_VERSION` (a change to the
probe invalidates every entry). A cache that cannot be read or written is skipped silently:
it only saves time. ``DENSEPRED_NO_CONTRACT_CACHE=1`` turns it off.

A process that starts another for the same model (a profile's window measured in a process of
its own) hands it the entries it probed or read (:func:`seen`, :func:`given`), so the other
process does not probe again, whether or not the disk cache can be written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, cache_folder

log = logging.getLogger("densepred")

PROBE_VERSION = 1
_seen: dict[str, dict[str, Any]] = {}  # entries this process probed or read
_given: dict[str, dict[str, Any]] = {}  # entries the process that started this one handed over


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([PROBE_VERSION, *parts], default=str).encode()).hexdigest()


def _folder() -> Path | None:
    if os.environ.get("DENSEPRED_NO_CONTRACT_CACHE"):
        return None
    return cache_folder("contracts")


def load(key: str) -> dict[str, Any] | None:
    if key in _given:
        return _given[key]
    folder = _folder()
    if folder is None:
        return None
    try:
        fields = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    _seen[key] = fields
    return fields


def store(key: str, fields: dict[str, Any]) -> None:
    _seen[key] = fields
    folder = _folder()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{key}.json", json.dumps(fields))
    except OSError as exc:
        log.debug("tiling contract not cached in %s: %s", folder, exc)


def seen() -> dict[str, dict[str, Any]]:
    """The entries this process probed or read, to hand to a process it starts."""
    return {**_given, **_seen}


def given(entries: dict[str, dict[str, Any]]) -> None:
    """Take the entries of the process that started this one."""
    _given.update(entries)
