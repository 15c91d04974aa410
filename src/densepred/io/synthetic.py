"""Synthetic EM-like volumes with membrane labels, for tests and the demo.

Cells are the Voronoi regions of random centres in physical space (z coarser than y, x,
as in serial-section EM); membranes are the voxels where the cell changes within a section,
thickened in the section plane. The image has bright, slightly different cell interiors with some dark
organelle-like blobs, dark membranes, blur and noise, stored as uint8.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def em_volume(shape: tuple[int, ...] = (32, 160, 160), *, seed: int = 0, cell_size: float = 32.0,
              z_spacing: float = 3.0, membrane_width: int = 1, noise: float = 0.08,
              blur: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A raw volume (uint8) and its labels (uint8: 1 membrane, 0 inside a cell).

    ``shape`` is (z, y, x) or (y, x); ``cell_size`` is the mean cell diameter in y/x pixels and
    ``z_spacing`` the section thickness in the same unit.
    """
    rng = np.random.default_rng(seed)
    spacing = np.array(([z_spacing] if len(shape) == 3 else []) + [1.0, 1.0])
    extent = np.array(shape) * spacing
    n_cells = max(2, int(np.prod(extent) / cell_size ** len(shape) * 1.5))
    centres = rng.uniform(-0.1, 1.1, size=(n_cells, len(shape))) * extent
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)),
                                indexing="ij"), axis=-1).reshape(-1, len(shape))
    cells = cKDTree(centres).query(grid)[1].reshape(shape)

    boundary = np.zeros(shape, dtype=bool)
    for axis in range(len(shape) - 2, len(shape)):  # membranes cut by the section plane
        change = np.diff(cells, axis=axis) != 0
        low = [slice(None)] * len(shape)
        low[axis] = slice(0, -1)
        boundary[tuple(low)] |= change
    in_plane = np.zeros((3,) * len(shape), dtype=bool)
    centre = (1,) * len(shape)
    in_plane[centre] = True
    for axis in range(len(shape) - 2, len(shape)):  # the section plane (y, x)
        for d in (0, 2):
            index = list(centre)
            index[axis] = d
            in_plane[tuple(index)] = True
    membrane = ndimage.binary_dilation(boundary, in_plane, iterations=membrane_width)

    brightness = rng.uniform(0.55, 0.85, size=n_cells)
    image = brightness[cells]
    blobs = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[2.0 / s for s in spacing])
    image = image - 0.25 * (blobs > 2.0 * blobs.std())
    image = np.where(membrane, 0.18, image)
    image = ndimage.gaussian_filter(image, sigma=[blur * 0.4 / s if s > 1 else blur for s in spacing])
    image = image + rng.normal(0, noise, size=shape)
    raw = np.clip(image * 255, 0, 255).astype(np.uint8)
    return raw, membrane.astype(np.uint8)
