"""An N5 volume predicted file to file against the same volume as a zarr array.

Writes one EM-like uint8 volume as zarr v3 and as N5 with the same blocks and codec (gzip, as
the Java N5 tools write by default, and raw), and predicts each with the near-free 1x1x1 net of
``pipeline_ceiling.py`` into OME-Zarr (uint8, one level), where reading weighs the most, in
turn: each run a fresh process, its wall time and peak resident set taken. Both are read by
densepred's own block readers (``io/chunk_files.py``, ``io/n5.py``).

    python benchmarks/n5_inputs.py                     # 128 x 1024 x 1024, blocks of 64^3, 3 rounds
    python benchmarks/n5_inputs.py --shape 64,2048,2048 --block 32,256,256 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import product
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import trivial_net
from tiff_inputs import in_turn, pages, summary


def slabs(shape: tuple[int, int, int], depth: int):
    """The volume, ``depth`` sections at a time (never whole in memory)."""
    sections = pages(shape)
    for start in range(0, shape[0], depth):
        yield start, np.stack([next(sections) for _ in range(min(depth, shape[0] - start))])


def write_zarr(path: Path, shape: tuple[int, ...], block: tuple[int, ...], codec: str) -> None:
    import zarr
    from zarr.codecs import GzipCodec

    array = zarr.create_array(path, shape=shape, chunks=block, dtype="uint8", zarr_format=3,
                              compressors=GzipCodec() if codec == "gzip" else None)
    for start, slab in slabs(shape, block[0]):
        array[start:start + len(slab)] = slab


def write_n5(path: Path, shape: tuple[int, ...], block: tuple[int, ...], codec: str) -> None:
    """As the Java N5 tools write: sizes x first, block headers and values big-endian, x fastest."""
    import gzip
    import json
    import struct

    path.mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"dimensions": shape[::-1], "blockSize": block[::-1],
                                                      "dataType": "uint8", "compression": {"type": codec}}))
    for start, slab in slabs(shape, block[0]):
        for y, x in product(range(0, shape[1], block[1]), range(0, shape[2], block[2])):
            piece = slab[:, y:y + block[1], x:x + block[2]]
            values = piece.tobytes()
            header = struct.pack(">HH3I", 0, 3, *piece.shape[::-1])
            file = path / str(x // block[2]) / str(y // block[1]) / str(start // block[0])
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(header + (gzip.compress(values, 6) if codec == "gzip" else values))


def volume_parser(description: str, grid: str) -> argparse.ArgumentParser:
    """The input benchmarks' options: the volume's ``--shape``, its ``--<grid>`` (blocks or
    chunks) and the ``--rounds``; read the shapes with :func:`ints`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="128,1024,1024")
    parser.add_argument(f"--{grid}", default="64,64,64")
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


def main() -> None:
    parser = volume_parser(__doc__, "block")
    parser.add_argument("--codecs", default="gzip,raw")
    args = parser.parse_args()
    shape, block = ints(args.shape), ints(args.block)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config = trivial_net(work)
        print(f"volume {'x'.join(map(str, shape))} uint8 ({np.prod(shape) / 2**20:.0f} MiB), blocks "
              f"{'x'.join(map(str, block))}; seconds and peak resident GiB per run, in turn")
        for codec in args.codecs.split(","):
            sources = {"zarr": work / f"v-{codec}.zarr", "n5": work / f"v-{codec}.n5"}
            write_zarr(sources["zarr"], shape, block, codec)
            write_n5(sources["n5"], shape, block, codec)
            print(f"  {codec}: {summary(in_turn(sources, config, work / 'o.zarr', args.rounds))}")


if __name__ == "__main__":
    main()
