"""Writes the precomputed volumes of ``tests/data/precomputed`` with tensorstore, an independent
writer of the format (not a dependency of densepred; run by hand in an environment that has it):

    python -m venv /tmp/ts && /tmp/ts/bin/pip install tensorstore numpy
    /tmp/ts/bin/python tests/data/make_precomputed.py

Each volume's values, as tensorstore reads them back, are saved beside it as ``<name>.npy``
(C, z, y, x), so densepred's reader is checked against another implementation's bytes.
"""

from pathlib import Path

import numpy as np
import tensorstore as ts

HERE = Path(__file__).parent / "precomputed"
RNG = np.random.default_rng(20261206)


def write(name, values, scales, dtype, encoding="raw", sharding=None):
    """``values`` (x, y, z, c) as scale 0 of a new volume; later scales are coarser copies."""
    for index, (key, resolution, offset, chunk) in enumerate(scales):
        data = values[::2 ** index, ::2 ** index, :] if index else values
        scale = {"key": key, "resolution": resolution, "voxel_offset": offset, "chunk_size": chunk,
                 "encoding": encoding, "size": list(data.shape[:3])}
        if sharding:
            scale["sharding"] = sharding
        spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(HERE / name)},
                "scale_metadata": scale, "create": True,
                "multiscale_metadata": {"data_type": dtype, "num_channels": values.shape[3], "type": "image"}}
        if index:
            spec["scale_index"] = index
            spec.pop("multiscale_metadata")
        store = ts.open(spec).result()
        store[...] = data
        stored = store.read().result()  # (x, y, z, c), as tensorstore decodes it
        np.save(HERE / f"{name}-{key}.npy", np.ascontiguousarray(np.transpose(stored, (3, 2, 1, 0))))


def main():
    murmur = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "murmurhash3_x86_128", "preshift_bits": 1,
              "minishard_bits": 2, "shard_bits": 2, "minishard_index_encoding": "gzip", "data_encoding": "gzip"}
    write("sharded-murmur", RNG.integers(0, 60000, (29, 21, 13, 2), dtype=np.uint16),
          [("8_8_30", [8, 8, 30], [5, -3, 2], [16, 8, 4])], "uint16", sharding=murmur)
    identity = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": 0,
                "minishard_bits": 1, "shard_bits": 1, "minishard_index_encoding": "raw", "data_encoding": "raw"}
    smooth = np.add.outer(np.add.outer(np.arange(34), np.arange(27)), np.arange(11))[..., None]
    write("sharded-jpeg", (smooth * 3 % 256).astype(np.uint8), [("4_4_40", [4, 4, 40], [0, 0, 0], [16, 16, 4]),
                                                                  ("8_8_40", [8, 8, 40], [0, 0, 0], [8, 8, 4])],
          "uint8", "jpeg", identity)
    write("unsharded-png", RNG.integers(0, 255, (19, 13, 7, 1), dtype=np.uint8),
          [("1_1_1", [1, 1, 1], [0, 0, 0], [8, 8, 4])], "uint8", "png")


if __name__ == "__main__":
    main()
