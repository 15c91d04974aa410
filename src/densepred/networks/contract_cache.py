"""Probed tiling contracts kept on disk, so a model is probed once per machine, not per run.

``$XDG_CACHE_HOME/densepred/contracts/<key>.json`` (default ``~/.cache``); the key hashes the
model's class and weights, the probe's arguments and :data:`PROBE_VERSION` (a change to the
probe invalidates every entry). A cache that cannot be read or written is skipped silently:
it only saves time. ``DENSEPRED_NO_CONTRACT_CACHE=1`` turns it off.
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


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([PROBE_VERSION, *parts], default=str).encode()).hexdigest()


def _folder() -> Path | None:
    if os.environ.get("DENSEPRED_NO_CONTRACT_CACHE"):
        return None
    return cache_folder("contracts")


def load(key: str) -> dict[str, Any] | None:
    folder = _folder()
    if folder is None:
        return None
    try:
        return json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store(key: str, fields: dict[str, Any]) -> None:
    folder = _folder()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{key}.json", json.dumps(fields))
    except OSError as exc:
        log.debug("tiling contract not cached in %s: %s", folder, exc)
