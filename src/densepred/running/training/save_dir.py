"""What a training keeps in its save_dir besides checkpoints and history: the config as trained,
and the lock that keeps one training per save_dir and name at a time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import Config, set_values
from ...errors import DensePredError
from ...io import ArraySpec
from ...io.run_lock import exclusive

log = logging.getLogger("densepred")


@contextlib.contextmanager
def training_lock(cfg: Config) -> Iterator[None]:
    """One training per save_dir and name at a time (:func:`densepred.io.run_lock.exclusive`);
    a save_dir created only for the lock goes again if the run leaves nothing in it."""
    assert cfg.save_dir is not None
    created = not cfg.save_dir.exists()
    try:
        cfg.save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DensePredError(f"cannot create save_dir {cfg.save_dir}: {exc.strerror}") from None
    try:
        with exclusive(cfg.save_dir / f".{cfg.name}.train.lock",
                       f"{cfg.save_dir} is being trained into ({cfg.name}) by another densepred run"):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                cfg.save_dir.rmdir()  # only if empty


def trained_config_path(cfg: Config, save_dir: Path) -> Path:
    """``<save_dir>/<name>.toml``, or ``<name>.trained.toml`` where that is the user's own config
    (``name`` and the file's stem alike, the config in its save_dir): never written over."""
    target = Path(save_dir) / f"{cfg.name}.toml"
    if cfg.path is not None and target.resolve() == Path(cfg.path).resolve():
        target = target.with_name(f"{cfg.name}.trained.toml")
        log.info("%s is the config itself; the config as trained goes to %s", cfg.path, target)
    return target


def trained_config_text(cfg: Config) -> str:
    """The config as trained, to be stored in save_dir: data paths absolute, save_dir '.'.

    Edited from the config file's own text when there is one, so its comments stay.
    """
    values: dict[str, Any] = {"name": cfg.name, "save_dir": "."}
    training = cfg.source.get("training", {})
    for key in ("data", "validation"):
        if key in training:
            values[f"training.{key}"] = [
                {side: str(ArraySpec.parse(spec, cfg.base_dir)) for side, spec in pair.items()}
                for pair in training[key]]
    source = cfg.path.read_text(encoding="utf-8") if cfg.path is not None and cfg.path.is_file() else cfg.source
    header = "# The config this run was trained with (written by densepred train).\n"
    return header + set_values(source, values)
