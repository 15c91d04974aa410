"""Compressed and tiled TIFF inputs, read lazily by their own strips or tiles (``io/tiff_chunks.py``):
every box as NumPy reads the decoded file, from several threads, with the kept chunks evicted,
and predicted as the same data given whole."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

import densepred
from densepred.interfaces.cli import main
from densepred.io import open_array, tiff_chunks
from densepred.io.tiff_chunks import TiffChunks
from tests.conftest import make_config
from tests.test_reliability_files import one_error_line

LAYOUTS = {
    "zlib, one strip a page": {"compression": "zlib", "rowsperstrip": 10**6},
    "lzw, strips of 5 rows": {"compression": "lzw", "rowsperstrip": 5},
    "zstd, tiles of 16 x 32": {"compression": "zstd", "tile": (16, 32)},
    "uncompressed tiles": {"tile": (32, 16)},
}


def boxes(shape, rng, count=25):
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in shape]
        yield tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(start, shape, strict=True))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kept", [tiff_chunks.CACHE_BYTES, 20_000])  # 20 kB: evicted at once, or not kept
def test_every_box_reads_what_numpy_reads_of_the_decoded_file(tmp_path, monkeypatch, layout, kept):
    monkeypatch.setattr(tiff_chunks, "CACHE_BYTES", kept)
    data = np.random.default_rng(1).integers(0, 65535, (7, 45, 67), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, **LAYOUTS[layout])
    array = open_array(str(tmp_path / "s.tif"))
    assert isinstance(array, TiffChunks)
    assert array.shape == data.shape
    assert array.dtype == data.dtype
    for box in [*boxes(data.shape, np.random.default_rng(2)), (slice(None),) * 3, (3, slice(2, 40, 3))]:
        np.testing.assert_array_equal(array[box], data[box])
    np.testing.assert_array_equal(np.asarray(array), data)


def test_threads_read_at_once_and_only_the_chunks_a_box_needs_are_decoded(tmp_path):
    data = np.random.default_rng(3).random((40, 64, 48), dtype=np.float32)
    tifffile.imwrite(tmp_path / "s.tif", data, compression="zlib", rowsperstrip=8)
    array = TiffChunks(tmp_path / "s.tif")
    decoded = []
    source = array.array

    class Counting:
        def __getitem__(self, key):
            values = source[key]
            decoded.append(values.size)
            return values

    array.array = Counting()
    np.testing.assert_array_equal(array[5:7, 10:20, 3:9], data[5:7, 10:20, 3:9])
    assert sum(decoded) == 2 * 16 * 48  # two pages, the two strips of 8 rows of each that rows 10-19 cross
    np.testing.assert_array_equal(array[5:7, 12:18, 30:40], data[5:7, 12:18, 30:40])
    assert sum(decoded) == 2 * 16 * 48  # kept: nothing decoded again
    failures = []

    def read(seed):
        for box in boxes(data.shape, np.random.default_rng(seed), 40):
            if not np.array_equal(array[box], data[box]):
                failures.append(box)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_compressed_stack_and_a_compressed_hyperstack_predict_as_their_arrays(tmp_path, capsys):
    config = make_config(tmp_path)
    net = densepred.create_prediction_net(densepred.load_config(config))
    stack = np.random.default_rng(4).integers(0, 255, (15, 53, 47), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="lzw", rowsperstrip=7)
    assert main(["predict", str(config), "--input", str(tmp_path / "stack.tif"), "--output",
                 str(tmp_path / "o.npy"), "--mirror", "--tile", "9,23,21", "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), densepred.predict_dense(
        net, stack, mirror=True, tile_shape=(9, 23, 21)))
    movie = np.random.default_rng(5).random((3, 11, 1, 29, 31), dtype=np.float32)
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TZCYX"}, compression="zlib")
    assert main(["predict", str(config), "--input", f"{tmp_path / 'movie.tif'}@t=2", "--output",
                 str(tmp_path / "t.npy"), "--mirror", "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), densepred.predict_dense(net, movie[2, :, 0], mirror=True),
                               rtol=0, atol=1e-6)
    # a strip overwritten with noise: one line naming the chunk that cannot be decoded
    with tifffile.TiffFile(tmp_path / "stack.tif") as tiff:
        offset, size = tiff.pages[9].dataoffsets[3], tiff.pages[9].databytecounts[3]
    whole = bytearray((tmp_path / "stack.tif").read_bytes())
    whole[offset:offset + size] = np.random.default_rng(6).integers(0, 255, size, dtype=np.uint8).tobytes()
    (tmp_path / "cut.tif").write_bytes(bytes(whole))
    one_error_line(capsys, main(["predict", str(config), "--input", str(tmp_path / "cut.tif"), "--output",
                                 str(tmp_path / "c.npy"), "--quiet"]), "chunk [9, 3, 0] of ")
    assert not (tmp_path / "c.npy").exists()


def test_a_codec_missing_here_is_one_line_at_open_not_a_corrupt_file_later(tmp_path, monkeypatch, capsys):
    import zarr

    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 20, 30), np.uint8), compression="zlib")
    opened = zarr.open_array

    class NoCodec:
        def __init__(self, array):
            self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks

        def __getitem__(self, key):  # as tifffile without imagecodecs for an LZW file
            raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(zarr, "open_array", lambda *a, **k: NoCodec(opened(*a, **k)))
    one_error_line(capsys, main(["predict", str(make_config(tmp_path)), "--input", str(tmp_path / "s.tif"),
                                 "--output", str(tmp_path / "o.npy"), "--quiet"]),
                   "s.tif cannot be decoded here: <COMPRESSION.LZW: 5> requires the 'imagecodecs' package; install "
                   "it (pip install imagecodecs) or save the file uncompressed")


def test_the_chunks_a_compressed_tiff_keeps_are_set_aside_in_the_memory_budget(tmp_path):
    from densepred.io.axes import AxesView
    from densepred.io.images import ChannelFirst
    from densepred.running import PredictJob, predict_to_file

    data = np.random.default_rng(7).integers(0, 255, (9, 40, 44), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", data, compression="zlib")
    np.save(tmp_path / "c.npy", data)
    chunks = TiffChunks(tmp_path / "c.tif")
    viewed = ChannelFirst(AxesView(chunks, "ZYX", list("ZYX")), 1, 3)
    assert tiff_chunks.kept_bytes_of(viewed) == tiff_chunks.CACHE_BYTES
    assert tiff_chunks.kept_bytes_of(ChannelFirst(data, 1, 3)) == 0
    config = make_config(tmp_path)
    peaks = {}
    for name in ("c.npy", "c.tif", "c.npy"):  # the array's peak again after: the process's own growth between
        job = PredictJob(config=config, input=str(tmp_path / name), output=str(tmp_path / "o.zarr"), tile=(9, 20, 22),
                         overwrite=True, memory_limit=8 * 2**30)
        peaks.setdefault(name, []).append(predict_to_file(job).estimated_peak)
    assert min(peaks["c.tif"]) - max(peaks["c.npy"]) > 0.9 * tiff_chunks.CACHE_BYTES
