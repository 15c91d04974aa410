"""napari sample data: a synthetic EM volume and a small membrane net trained on it.

The net is trained on first use (about 20 s on two CPU cores) into
``$XDG_CACHE_HOME/densepred/napari-sample`` and reused after that, so the sample works offline.
The raw layer's metadata names the net's config, which the densepred widget then preselects.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h5py

from ...files import cache_folder

SAMPLE_STEPS = 300
VOXEL_SIZE = (30.0, 6.0, 6.0)  # nanometres, as the synthetic data's anisotropy (z 5x coarser)
CONFIG_KEY = "densepred_config"


def membranes_sample(folder: Path | None = None, steps: int = SAMPLE_STEPS) -> list[tuple[Any, dict[str, Any], str]]:
    """The sample's layers: the test volume (image) and its true membranes (labels, hidden)."""
    folder = sample_folder(folder, steps)
    with h5py.File(folder / "test.h5", "r") as f:
        raw, truth = f["raw"][...], f["label"][...]
    config = str(folder / "membranes.toml")
    return [
        (raw, {"name": "EM (synthetic)", "scale": VOXEL_SIZE, "metadata": {CONFIG_KEY: config}}, "image"),
        (truth, {"name": "membranes (truth)", "scale": VOXEL_SIZE, "visible": False}, "labels"),
    ]


def sample_folder(folder: Path | None = None, steps: int = SAMPLE_STEPS) -> Path:
    """The folder with the sample's volumes, config and trained weights; made once."""
    folder = Path(folder) if folder is not None else cache_folder("napari-sample")
    if (folder / "run" / "membranes-LAST.safetensors").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _make(work, steps)
        try:
            os.replace(work, folder)  # atomic: another process either finished first or not at all
        except OSError:
            if not (folder / "run" / "membranes-LAST.safetensors").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _make(work: Path, steps: int) -> None:
    from ...running import train
    from ..demo import write_example

    config = write_example(work, steps, test_shape=(24, 192, 192))  # save_dir "run": relative to the config
    train(config, steps=steps, device="cpu", progress=False)
