"""Write a zarr input for ``densepred predict``: an existing array (HDF5, N5, neuroglancer
precomputed, TIFF, NumPy or zarr, given as a densepred array spec) copied into a chunked zarr
v3 array, or a small synthetic EM-like volume when no input is given. Where the source says
where its voxels lie (OME-Zarr, N5, precomputed, CREMI or BigDataViewer metadata, a TIFF's
Fiji or OME calibration), the copy carries it as ``voxel_size``, ``offset`` and ``units``
attributes, which densepred reads back.

    .venv/bin/python examples/make_zarr.py demo/test.h5:raw demo/raw.zarr   # copy an HDF5 dataset
    .venv/bin/python examples/make_zarr.py - demo/synthetic.zarr            # a synthetic 48x256x256 volume

The copy goes slab by slab along z, so the input may be larger than memory. Chunks of 64 voxels
per side suit densepred's tiles; any chunking works.
"""

from __future__ import annotations

import sys

import numpy as np
import zarr

from densepred.io import ArraySpec, open_array
from densepred.io.arrays import input_placement

CHUNK = 64


def synthetic(shape: tuple[int, int, int] = (48, 256, 256)) -> np.ndarray:
    from densepred.interfaces.demo import em_volume

    raw, _ = em_volume(shape, seed=7)
    return raw


def copy(source, output: str) -> zarr.Array:
    shape = tuple(source.shape)
    chunks = tuple(min(CHUNK, n) for n in shape)
    array = zarr.create_array(output, shape=shape, chunks=chunks, dtype=source.dtype, overwrite=False)
    for z in range(0, shape[0], chunks[0]):
        array[z:z + chunks[0]] = np.asarray(source[z:z + chunks[0]])
    return array


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec, output = argv
    source = synthetic() if spec == "-" else open_array(ArraySpec.parse(spec))
    array = copy(source, output)
    placement = None if spec == "-" else input_placement(ArraySpec.parse(spec))
    if placement is not None:
        array.attrs.update({"voxel_size": list(placement.voxel_size), "offset": list(placement.translation),
                            **({"units": [placement.unit] * len(placement.voxel_size)} if placement.unit else {})})
    print(f"wrote {output}: shape {list(array.shape)}, dtype {array.dtype}, chunks {list(array.chunks)}"
          + (f", voxel size {list(placement.voxel_size)}" if placement else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
