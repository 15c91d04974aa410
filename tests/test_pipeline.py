"""The read/compute/write pipeline with several writers, and the per-voxel steps around it."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch
import zarr

import densepred
from densepred.io.encoding import Encoding
from densepred.io.images import to_float32
from densepred.pipeline import run_pipeline

from .test_predict_files import chunk_files, in_memory


def test_every_batch_is_written_once_and_a_keys_batches_by_one_writer_in_order():
    batches = [(key, part) for key in range(7) for part in range(5)]  # 7 tiles of 5 slabs each
    written: dict[int, list[tuple[int, int, int]]] = {}
    lock = threading.Lock()

    def write(batch, result):
        time.sleep(0.001 * (batch[1] % 3))  # writers finish out of step
        with lock:
            written.setdefault(batch[0], []).append((threading.get_ident(), batch[1], result))

    run_pipeline(batches, read=lambda b: b[0] * 10 + b[1], compute=lambda x: x * 2, write=write,
                 writers=3, writer_of=lambda b: b[0])
    assert sorted(written) == list(range(7))
    threads = set()
    for key, events in written.items():
        assert len({thread for thread, _, _ in events}) == 1  # one writer per key
        assert [part for _, part, _ in events] == list(range(5))  # in order
        assert [result for _, _, result in events] == [2 * (key * 10 + part) for part in range(5)]
        threads |= {thread for thread, _, _ in events}
    assert len(threads) == 3  # the keys were dealt out


def test_a_results_parts_go_to_writers_after_its_own_and_each_part_keeps_its_writer():
    batches = [(key, slab) for key in range(4) for slab in range(6)]  # 4 tiles of 6 slabs, cut in 3 columns
    written: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    lock = threading.Lock()

    def write(part, value):
        time.sleep(0.001 * (part[2] % 2))
        with lock:
            written.setdefault((part[0], part[2]), []).append((threading.get_ident(), part[1], value))

    run_pipeline(batches, read=lambda b: b, compute=lambda b: b[0] * 100 + b[1], write=write, writers=2,
                 writer_of=lambda b: b[0], parts=lambda b, r: [((*b, c), r * 10 + c) for c in range(3)])
    assert sorted(written) == [(key, c) for key in range(4) for c in range(3)]
    for (key, column), events in written.items():
        assert len({thread for thread, _, _ in events}) == 1  # a column keeps its writer
        assert [(slab, value) for _, slab, value in events] == [(s, (key * 100 + s) * 10 + column) for s in range(6)]
    for key in range(4):
        first, second = ({t for t, _, _ in written[key, c]} for c in (0, 1))
        assert first != second  # a tile's columns are shared out


def test_a_failing_writer_stops_the_run_and_its_error_is_raised():
    written = []

    def write(batch, result):
        if batch == 5:
            raise OSError(28, "No space left on device")
        written.append(batch)

    with pytest.raises(OSError, match="No space left"):
        run_pipeline(range(200), read=lambda b: b, compute=lambda x: x, write=write, writers=2)
    assert len(written) < 199  # the others stopped instead of finishing everything


def test_integer_input_scaling_is_float64_division_rounded_to_float32():
    # the one-pass float32 division is used for 8 and 16 bit; it must give the same numbers
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        values = np.arange(info.min, info.max + 1).astype(dtype)
        expected = (values.astype(np.float64) / info.max).astype(np.float32)
        np.testing.assert_array_equal(to_float32(values), expected)
    big = np.array([0, 7, 2**31 - 1, -2**31], np.int32)
    np.testing.assert_array_equal(to_float32(big), (big / (2**31 - 1)).astype(np.float32))


@pytest.mark.parametrize("classes", [None, (2, 0)])
def test_uint8_encoding_rounds_and_stores_nan_as_zero_without_touching_its_input(classes):
    rng = np.random.default_rng(3)
    probabilities = rng.random((3, 5, 7, 9), dtype=np.float32)
    probabilities[1, 2, 3, 4] = np.nan
    probabilities[0, 0, 0, 0] = 0.5 / 255  # a tie: rounds to even
    before = probabilities.copy()
    stored = Encoding(3, "uint8", classes)(probabilities)
    chosen = probabilities if classes is None else probabilities[list(classes)]
    expected = np.rint(np.where(np.isnan(chosen), 0, chosen) * 255).astype(np.uint8)
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_array_equal(probabilities, before)


@pytest.mark.parametrize("encoding", [Encoding(3, "uint8"), Encoding(3, "float16", (2, 0)), Encoding(3, argmax=True),
                                      Encoding(3, "uint8", (1,)), Encoding(3)], ids=str)
def test_a_box_encoded_block_by_block_equals_the_whole_box_encoded_at_once(encoding, monkeypatch):
    from densepred.running.compute import sink

    monkeypatch.setattr(sink, "BLOCK_VALUES", 3 * 2 * 23 * 3)  # blocks of 2 rows: 7 and a half of them
    probabilities = np.random.default_rng(3).random((3, 15, 23, 11), dtype=np.float32)[..., 4:]  # a view, as cropped
    probabilities[:, 5, 7, 2] = np.nan  # the second block, and the last
    probabilities[2, 14, 0, 0] = np.nan  # softmax makes NaN of any non-finite logit
    written = {}

    class Output:
        def write_box(self, box, values, labels):
            written.update(box=box, values=values.copy(), labels=labels)

    non_finite = sink.NonFinite(shift=(100, 0, 0))
    assert sink.Sink(Output(), encoding, non_finite).write((slice(4, 19), slice(0, 23), slice(9, 16)),
                                                           probabilities) == 15 * 23 * 7
    np.testing.assert_array_equal(written["values"], encoding(probabilities))
    assert written["values"].dtype == encoding.stored_dtype
    assert written["labels"] == encoding.argmax
    assert (non_finite.count, non_finite.first) == (2, (109, 7, 11))


def test_a_file_run_with_two_writers_equals_the_in_memory_prediction(config, tmp_path):
    # tiles of a few voxels, many in flight: the writers interleave tile after tile
    volume = np.random.default_rng(11).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    job = densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / "out.zarr"), tile=(6, 19, 17),
                               mode="mfp", mirror=True, progress=False, levels=1)
    densepred.predict_to_file(job)
    got = zarr.open_group(tmp_path / "out.zarr")["0"][...]
    np.testing.assert_array_equal(got, in_memory(config, volume, tile="6,19,17", mirror=True))


def test_the_pyramid_is_built_while_tiles_are_written_and_a_resume_after_a_kill_is_byte_identical(config, tmp_path,
                                                                                                monkeypatch):
    from densepred.io import pyramid as downsample
    from densepred.io import pyramid as file_job  # where PyramidFeed.finish finds build_pyramid

    volume = np.random.default_rng(5).random((21, 45, 53), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)

    def job(name, **options):  # output tiles of 8 x 16 x 16: on the step grid of every level
        return densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / name), tile=(10, 23, 23),
                                    mode="dilated", mirror=True, progress=False, levels=3, dtype="uint8", **options)

    passes = []
    real_pass = file_job.build_pyramid
    def counted(*args):
        passes.append(real_pass(*args))
        return passes[-1]

    monkeypatch.setattr(file_job, "build_pyramid", counted)
    densepred.predict_to_file(job("whole.zarr"))
    group = zarr.open_group(tmp_path / "whole.zarr")
    levels = [group[str(i)][...] for i in range(3)]
    assert passes == [0]  # the feed built every shard; the pass after the tiles found nothing to do
    for below, above in itertools.pairwise(levels):
        np.testing.assert_array_equal(above, downsample.downsample_mean(below, (2, 2, 2)))

    # killed after tiles and pyramid shards were written, then resumed: the same bytes
    from densepred.io.outputs import OutputArray

    real_write = OutputArray.write_box
    count = {"n": 0}

    def dying(self, box, values, labels):
        count["n"] += 1
        if count["n"] == 20:
            raise KeyboardInterrupt
        real_write(self, box, values, labels)

    monkeypatch.setattr(OutputArray, "write_box", dying)
    with pytest.raises(KeyboardInterrupt):
        densepred.predict_to_file(job("cut.zarr"))
    monkeypatch.setattr(OutputArray, "write_box", real_write)
    assert (tmp_path / "cut.zarr.densepred" / "level1.log").read_text()  # the feed had logged shards
    densepred.predict_to_file(job("cut.zarr", resume=True))
    assert passes[-1] > 0  # the shards under tiles done before the kill came from the pass
    assert chunk_files(tmp_path / "cut.zarr") == chunk_files(tmp_path / "whole.zarr")


def test_on_the_cpu_a_result_is_finished_in_the_writer_thread_and_an_upload_shares_the_array():
    from densepred.running.compute.transfers import Transfers

    transfers = Transfers(torch.device("cpu"))
    array = np.random.default_rng(5).random((2, 3, 7, 9), dtype=np.float32)
    upload = transfers.upload(array)
    assert np.shares_memory(transfers.take(upload).numpy(), array)
    threads: list[int] = []

    def finish(logits: torch.Tensor) -> torch.Tensor:
        threads.append(threading.get_ident())
        return torch.softmax(logits, dim=1)

    result = transfers.download(transfers.take(upload), finish)
    assert threads == []  # nothing done in the computing thread
    written = []
    writer = threading.Thread(target=lambda: written.append(result.numpy()))
    writer.start()
    writer.join()
    assert threads == [writer.ident]
    expected = np.exp(array) / np.exp(array).sum(1, keepdims=True)
    np.testing.assert_allclose(written[0], expected, rtol=1e-6)
    assert written[0].flags.c_contiguous
