"""A neuroglancer precomputed volume predicted file to file against the same volume as zarr.

Writes one EM-like uint8 volume as a zarr v3 array (gzip) and as precomputed scales with the
same chunks: unsharded with each chunk gzip-compressed as CloudVolume stores it (``<name>.gz``),
sharded (MurmurHash3, gzip data and minishard indexes, as igneous writes large volumes), and
unsharded with JPEG chunks (quality 90), the encoding of most published EM volumes, whose
decoding costs more than gzip's. Each is predicted with the near-free 1x1x1 net of
``pipeline_ceiling.py`` into OME-Zarr (uint8, one level), where reading weighs the most, in
turn: each run a fresh process, its wall time and peak resident set taken.

    python benchmarks/precomputed_inputs.py            # 128 x 1024 x 1024, chunks of 64^3, 3 rounds
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from collections import defaultdict
from itertools import product
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from n5_inputs import ints, slabs, volume_parser, write_zarr
from pipeline_ceiling import trivial_net
from tiff_inputs import in_turn, summary

from densepred.io.precomputed import compressed_morton_code

SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "murmurhash3_x86_128", "preshift_bits": 3,
            "minishard_bits": 4, "shard_bits": 2, "minishard_index_encoding": "gzip", "data_encoding": "gzip"}


def chunks_of(shape: tuple[int, ...], chunk: tuple[int, ...]):
    """Each chunk's grid position (x, y, z), its file name and its raw bytes (x fastest)."""
    for start, slab in slabs(shape, chunk[0]):
        for y, x in product(range(0, shape[1], chunk[1]), range(0, shape[2], chunk[2])):
            piece = slab[:, y:y + chunk[1], x:x + chunk[2]]
            cell = (x // chunk[2], y // chunk[1], start // chunk[0])
            name = "_".join(f"{a}-{a + n}" for a, n in zip((x, y, start), piece.shape[::-1], strict=True))
            yield cell, name, piece.tobytes()


def write_precomputed(folder: Path, shape: tuple[int, ...], chunk: tuple[int, ...], sharded: bool,
                      encoding: str = "raw") -> None:
    import imagecodecs
    import mmh3

    scale = {"key": "s0", "size": list(shape[::-1]), "resolution": [4, 4, 40], "voxel_offset": [0, 0, 0],
             "chunk_sizes": [list(chunk[::-1])], "encoding": encoding, **({"sharding": SHARDING} if sharded else {})}
    (folder / "s0").mkdir(parents=True)
    (folder / "info").write_text(json.dumps({"type": "image", "data_type": "uint8", "num_channels": 1,
                                             "scales": [scale]}))
    grid = tuple(-(-n // c) for n, c in zip(shape[::-1], chunk[::-1], strict=True))
    shards: dict[int, dict[int, list[tuple[int, bytes]]]] = defaultdict(lambda: defaultdict(list))
    for cell, name, values in chunks_of(shape, chunk):
        if encoding == "jpeg":  # one image of the chunk's rows, x fastest, as CloudVolume encodes it
            rows = np.frombuffer(values, np.uint8).reshape(-1, min(chunk[2], shape[2] - cell[0] * chunk[2]))
            (folder / "s0" / name).write_bytes(imagecodecs.jpeg8_encode(rows, level=90))
            continue
        if not sharded:
            (folder / "s0" / f"{name}.gz").write_bytes(gzip.compress(values, 6))
            continue
        code = compressed_morton_code(cell, grid)
        hashed = int.from_bytes(mmh3.hash_bytes((code >> 3).to_bytes(8, "little"), 0, x64arch=False)[:8], "little")
        shards[(hashed >> 4) & 3][hashed & 15].append((code, gzip.compress(values, 6)))
    for shard, minishards in shards.items():
        write_shard(folder / "s0" / f"{shard:01x}.shard", minishards)


def write_shard(path: Path, minishards: dict[int, list[tuple[int, bytes]]]) -> None:
    """A shard file: its index, then each minishard's chunks and its (gzip) index."""
    index, body = np.zeros((16, 2), "<u8"), bytearray()
    for minishard in sorted(minishards):
        chunks = sorted(minishards[minishard])
        ids, starts, sizes, end = [], [], [], 0
        for code, data in chunks:
            ids.append(code)
            starts.append(len(body) - end)
            sizes.append(len(data))
            body += data
            end = len(body)
        table = np.array([np.diff(ids, prepend=0), starts, sizes], "<u8")
        encoded = gzip.compress(table.tobytes())
        index[minishard] = (len(body), len(body) + len(encoded))
        body += encoded
    path.write_bytes(index.tobytes() + bytes(body))


def check_equal(sources: dict[str, Path], shape: tuple[int, ...]) -> None:
    """Each source reads as the zarr array at a few boxes (a chunk the reader missed reads as
    0), JPEG within its loss (a mean difference under 4 grey values)."""
    from densepred.io import open_array

    arrays = {kind: open_array(str(source)) for kind, source in sources.items()}
    for start in ((0, 0, 0), tuple(n // 2 - 5 for n in shape), tuple(n - 7 for n in shape)):
        box = tuple(slice(a, a + 7) for a in start)
        reference = arrays["zarr"][box].astype(np.float64)
        for kind, array in arrays.items():
            difference = np.abs(array[box] - reference).mean()
            if difference > (4 if kind == "jpeg" else 0):
                raise SystemExit(f"{kind} reads other values than zarr at {box} (mean difference {difference:.2f})")


def main() -> None:
    args = volume_parser(__doc__, "chunk").parse_args()
    shape, chunk = ints(args.shape), ints(args.chunk)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config = trivial_net(work)
        sources = {"zarr": work / "v.zarr", "precomputed": work / "unsharded", "sharded": work / "sharded",
                   "jpeg": work / "jpeg"}
        write_zarr(sources["zarr"], shape, chunk, "gzip")
        write_precomputed(sources["precomputed"], shape, chunk, sharded=False)
        write_precomputed(sources["sharded"], shape, chunk, sharded=True)
        write_precomputed(sources["jpeg"], shape, chunk, sharded=False, encoding="jpeg")
        check_equal(sources, shape)
        print(f"volume {'x'.join(map(str, shape))} uint8 ({np.prod(shape) / 2**20:.0f} MiB), chunks "
              f"{'x'.join(map(str, chunk))}, gzip; seconds and peak resident GiB per run, in turn")
        print(f"  {summary(in_turn(sources, config, work / 'o.zarr', args.rounds))}")


if __name__ == "__main__":
    main()
