"""A prediction network from a training config and its saved weights (ELEKTRONN's create_predncnn)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config, load_config
from ..errors import DensePredError
from ..geometry import Geometry
from .build import DenseNet, build_net
from .caller_state import rng_kept
from .weights import last_path, load_weights

log = logging.getLogger("densepred")
PREDICTION_MODES = ("auto", "mfp", "dilated", "naive", "stream")


def create_prediction_net(config: Config | str | Path, save_dir: str | Path | None = None,
                          param_file: str | Path | None = None, patch_size=None,
                          mode: str | None = None) -> DenseNet:
    """The config's network with trained weights, in eval mode, ready for ``predict_dense``.

    Args:
        config: the config (or its path) the network was trained with.
        save_dir: where the run saved its weights; default the config's ``save_dir``.
        param_file: a weights file to load instead of ``<save_dir>/<name>-LAST.safetensors``.
        patch_size: the input tile for prediction (larger than the training patch is faster);
            default ``[prediction] tile_shape``, else sized to memory by ``predict_dense``.
            A size that is not valid for ``mode`` is moved to the nearest valid one, with a
            logged warning.
        mode: the dense engine ``predict_dense`` uses by default (``mfp``, ``dilated``,
            ``naive`` or ``auto``); default the config's ``[prediction] mode``, which
            ``densepred profile --write`` sets to the fastest one.

    The returned net's ``tile_shape`` and ``mode`` attributes are ``predict_dense``'s defaults.

    Example:
        >>> net = create_prediction_net("membranes.toml", patch_size=[24, 200, 200])  # doctest: +SKIP
        >>> probs = predict_dense(net, volume, mirror=True)                            # doctest: +SKIP
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    if mode is None:
        mode = cfg.prediction.mode
    if mode not in PREDICTION_MODES:
        raise DensePredError(f"mode {mode!r} is invalid; valid: {', '.join(PREDICTION_MODES)}")
    with rng_kept():  # the initial weights are replaced by the trained ones
        net = build_net(cfg)
    if param_file is not None:
        weights = Path(param_file)
    else:
        folder = Path(save_dir) if save_dir is not None else cfg.save_dir
        if folder is None:
            raise DensePredError("no save_dir: pass save_dir= or param_file=, or load the config from a file")
        weights = last_path(folder, cfg.name)
    load_weights(net, weights)
    net.eval()
    net.mode = mode
    if net.geometry is not None:
        requested = patch_size if patch_size is not None else cfg.prediction.tile_shape
        net.tile_shape = None if requested is None else valid_tile(net.geometry, requested, net.mode)
    return net


def valid_tile(geometry: Geometry, requested, mode: str) -> tuple[int, ...]:
    """``requested`` if valid for ``mode``, else the nearest valid tile (logged, never silent)."""
    tile = (requested,) * geometry.ndim if isinstance(requested, int) else tuple(int(v) for v in requested)
    if len(tile) != geometry.ndim or any(v < 1 for v in tile):
        raise DensePredError(f"patch_size {requested!r} is invalid; expected {geometry.ndim} positive integers")
    needed = "mfp" if mode == "mfp" else "dilated"
    if geometry.is_valid(tile, needed):
        return tile
    below, above = geometry.nearest_valid(tile, needed)
    chosen = tuple(
        a if b is None or b < geometry.fov[i] or (a - t) < (t - b) else b
        for i, (t, b, a) in enumerate(zip(tile, below or (None,) * len(tile), above, strict=True))
    )
    log.warning("patch size %s is not valid for %s prediction; using the nearest valid %s",
                list(tile), needed, list(chosen))
    return chosen


create_predncnn = create_prediction_net
