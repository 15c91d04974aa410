"""A folder of 2D TIFF sections predicted file to file, beside the same volume as one zarr array.

Writes one EM-like uint8 volume (the texture of ``tiff_inputs.py``) as a folder of one file
per section, zlib-compressed (tifffile's default strips) and uncompressed, and as a zarr array
(chunks of 64 x 256 x 256, zstd); predicts each with the near-free 1x1x1 net of
``pipeline_ceiling.py`` into OME-Zarr (uint8, one level), where reading weighs the most, in
turn, each run a fresh process; prints each way's median seconds and peak resident set.

    python benchmarks/tiff_sections.py                      # 96 x 2048 x 2048, 3 rounds
    python benchmarks/tiff_sections.py --shape 384,2048,2048 --rounds 1
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import trivial_net
from tiff_inputs import compare, pages, volume_options


def write_sources(work: Path, shape: tuple[int, int, int]) -> dict[str, Path]:
    """The volume as sections (zlib, uncompressed) and as zarr, section by section."""
    sources = {"sections, zlib": work / "zlib", "sections, uncompressed": work / "raw", "zarr": work / "v.zarr"}
    for folder in list(sources.values())[:2]:
        folder.mkdir()
    array = zarr.create_array(sources["zarr"], shape=shape, chunks=(64, 256, 256), dtype="uint8")
    slab = []
    for z, section in enumerate(pages(shape)):
        tifffile.imwrite(sources["sections, zlib"] / f"s{z:05d}.tif", section, compression="zlib")
        tifffile.imwrite(sources["sections, uncompressed"] / f"s{z:05d}.tif", section)
        slab.append(section)
        if len(slab) == 64 or z == shape[0] - 1:
            array[z + 1 - len(slab):z + 1] = np.stack(slab)
            slab = []
    return sources


def main() -> None:
    shape, rounds = volume_options(__doc__)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        compare(write_sources(work, shape), trivial_net(work), work, shape, rounds)


if __name__ == "__main__":
    main()
