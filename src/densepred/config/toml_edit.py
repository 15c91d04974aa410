"""Editing config files with tomlkit, which keeps the user's comments, order and layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from ..errors import ConfigError


def set_prediction_settings(text: str, tile_shape: Sequence[int], mode: str) -> str:
    """TOML text with ``[prediction] tile_shape`` and ``mode`` set; everything else kept.

    Works with any valid TOML spelling of the table: ``[prediction]`` with comments or
    spaces in the header, dotted keys (``prediction.mode = ...``), multi-line arrays; a
    missing table is added at the end.
    """
    return set_values(text, {"prediction.tile_shape": list(tile_shape), "prediction.mode": mode})


def set_values(source: str | Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """TOML text of ``source`` (TOML text, or a parsed document) with ``values`` set.

    Keys of ``values`` are dotted paths (``"training.data"``); missing tables are created.
    Comments, order and layout of TOML text are kept.
    """
    document = _parse(source) if isinstance(source, str) else _document(source)
    for dotted, value in values.items():
        *tables, key = dotted.split(".")
        container: Any = document
        for name in tables:
            if name not in container:
                container.append(name, tomlkit.table())
            container = container[name]
        container[key] = value
    return tomlkit.dumps(document)


def _document(data: Mapping[str, Any]) -> tomlkit.TOMLDocument:
    document = tomlkit.document()
    for key, value in data.items():
        document[key] = value
    return document


def _parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"cannot edit the config: it is not valid TOML ({exc})") from None
