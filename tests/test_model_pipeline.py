"""A model written elsewhere runs its windows through the read/compute/write pipeline: the next
windows are read and computed while the last one is written, with the numbers of one window
after another."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import densepred
from densepred.errors import Cancelled
from densepred.io.done_ids import DoneIds
from densepred.running.compute.model_run import ModelRun
from densepred.running.jobs import model_job


class Smooth(nn.Module):
    """Two 3x3x3 convolutions: a context of 2 voxels per side, exactly tileable."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 3, padding=1))

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def run():
    torch.manual_seed(3)
    net = densepred.from_torch(Smooth().eval(), dims=3, in_channels=1)
    image = np.random.default_rng(5).random((1, 23, 37, 29), dtype=np.float32)
    return ModelRun.create(net, image, "exact", (12, 16, 16), 0.5, None, None, "cpu")


def test_windows_are_read_and_computed_while_the_last_is_written_with_the_same_numbers(run):
    pieces = run.exact_windows()
    assert len(pieces) > 4
    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    original = run._read_window

    def read(starts):
        with lock:
            events.append(("read", starts_of[tuple(starts)]))
        return original(starts)

    starts_of = {p.starts: i for i, p in enumerate(pieces)}
    run._read_window = read
    results: dict[int, np.ndarray] = {}

    def take(piece, result):
        i = starts_of[piece.starts]
        with lock:
            events.append(("take", i))
        time.sleep(0.05)  # a slow write: the reader and the model go on meanwhile
        results[i] = result
        with lock:
            events.append(("taken", i))

    run.forward_each(pieces, take, starts=lambda piece: piece.starts)
    assert [i for kind, i in events if kind == "take"] == list(range(len(pieces)))  # in order, one writer
    first_written = events.index(("taken", 0))
    assert ("read", 2) in events[:first_written]  # read ahead while window 0 was being written
    run._read_window = original
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(results[i], run.forward(piece.starts))  # bit for bit


def test_an_error_in_the_writer_or_a_cancel_stops_the_windows(run):
    pieces = run.exact_windows()
    computed: list[int] = []
    original = run._compute

    def compute(x):
        computed.append(1)
        return original(x)

    run._compute = compute

    def failing(piece, result):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run.forward_each(pieces, failing, starts=lambda piece: piece.starts)
    assert len(computed) < len(pieces)  # stopped early, not after every window

    def cancel():
        if len(computed) >= 2:
            raise Cancelled("cancelled")

    computed.clear()
    with pytest.raises(Cancelled):
        run.forward_each(pieces, lambda piece, result: None, starts=lambda piece: piece.starts, poll=cancel)
    assert len(computed) == 2


def test_windows_keep_the_heap_where_the_budget_holds_twice_their_estimate(monkeypatch):
    from densepred.networks.memory_budget import MemoryBudget
    from densepred.running.jobs import in_memory
    from densepred.running.planning import model_window

    assert model_window.heap_kept(100, MemoryBudget(1000, 800, "cpu"))  # room 200: twice the estimate
    assert not model_window.heap_kept(101, MemoryBudget(1000, 800, "cpu"))
    assert model_window.heap_kept(10**12, MemoryBudget(1000, 800, "cuda"))  # the maps are on the device

    modes: list[bool] = []
    real = in_memory.large_blocks_returned

    def recording(returned=True):
        modes.append(returned)
        return real(returned)

    monkeypatch.setattr(in_memory, "large_blocks_returned", recording)
    torch.manual_seed(3)
    net = densepred.from_torch(Smooth().eval(), dims=3, in_channels=1)
    image = np.random.default_rng(6).random((19, 27, 21), dtype=np.float32)
    kept = densepred.predict_dense(net, image, mode="exact", tile_shape=(10, 14, 14))
    monkeypatch.setattr(model_window, "HEAP_KEPT", 10.0**15)  # no budget holds that
    returned = densepred.predict_dense(net, image, mode="exact", tile_shape=(10, 14, 14))
    assert modes == [True, False, True, True]  # the probes return; the windows keep, then return
    np.testing.assert_array_equal(kept, returned)


def test_blend_rows_are_chunked_by_the_windows_step_unless_that_cuts_a_window_too_fine():
    class Run:  # the window starts along z, y, x and the window's size
        output_window = (16, 128, 100)

        @staticmethod
        def blend_axes():
            return [[0, 8], [0, 64, 128, 192], [0, 48, 96, 112]]

    assert model_job.row_chunks(Run) == (64, 100)  # 128 and 64: chunks of 64; 100 and 48: 4 is too fine


@pytest.mark.parametrize(("room", "expected"), [(7 * 10**6, "kept"), (5 * 10**6, "largest"), (10**7, "kept")])
def test_the_default_window_keeps_its_heap_unless_the_largest_computes_under_half_its_voxels(room, expected):
    from densepred.networks.memory_budget import MemoryBudget
    from densepred.running.planning import model_window as mw
    from tests.test_foreign import UNet

    net = densepred.from_torch(UNet(dims=2, depth=2, width=4).eval(), dims=2, in_channels=1, output="identity")
    run = ModelRun.create(net, np.random.default_rng(7).random((300, 310), dtype=np.float32), "exact", None, 0.0,
                          None, None, "cpu")
    c, spatial, context = run.contract, run.source.spatial_shape, run.contract.context_with(run.flips)
    budget = MemoryBudget(room, 0, "cpu")

    def cost(window):
        return 1000 * int(np.prod(window))

    count = mw.exact_counter(spatial, c, context)

    def chosen(returned_cost):  # the rule's choice when returned heaps cost that much
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mw, "RETURNED_COST", returned_cost)
            return mw.default_window(c, spatial, context, cost, budget)

    def computed(window):  # voxels its windows compute over the image, context included
        return np.prod(window) * np.prod([count(axis, n) for axis, n in enumerate(window)])

    whole, kept = chosen(0.0), chosen(float("inf"))  # the largest window, and the largest that keeps its heap
    assert not mw.heap_kept(cost(whole), budget)
    assert mw.heap_kept(cost(kept), budget)
    assert (computed(kept) <= mw.RETURNED_COST * computed(whole)) == (expected == "kept")
    assert mw.default_window(c, spatial, context, cost, budget) == (kept if expected == "kept" else whole)


def test_a_2d_model_over_a_stack_takes_half_the_slices_rather_than_return_its_heap(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from densepred.interfaces.cli import main
    from densepred.networks.memory_budget import MemoryBudget
    from densepred.running.planning import model_window as mw
    from tests.test_foreign import UNet, trained_looking

    # a window's estimate in proportion to its voxels; the budget holds 1.5x the whole stack's
    # window: so whole it would return its maps, and half of its slices keep them
    monkeypatch.setattr(mw.ModelMemory, "window_bytes", lambda self, window, *args: 1000 * int(np.prod(window)))
    monkeypatch.setattr(mw, "memory_budget", lambda limit, device: MemoryBudget(int(1.5 * 1000 * 16 * 60 * 52), 0,
                                                                                "cpu"))
    stack = np.random.default_rng(8).random((16, 60, 50), dtype=np.float32)
    np.save(tmp_path / "in.npy", stack)
    model = trained_looking(UNet(dims=2, depth=2, width=4), seed=9).float().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet.safetensors")
    assert main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", '{"dims": 2, "depth": 2, '
                 '"width": 4}', "--weights", str(tmp_path / "unet.safetensors"), "--dims", "2", "--activation",
                 "identity", "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy"), "--quiet"]) == 0
    record = json.loads((tmp_path / "o.npy.densepred" / "run.json").read_text())
    assert record["tiles"]["window"] == [8, 60, 52]
    net = densepred.from_torch(model, dims=2, in_channels=1, output="identity")
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), densepred.predict_dense(net, stack, mode="exact"),
                               rtol=0, atol=1e-5)


def test_the_windows_meeting_a_box_are_those_of_the_whole_listing_that_meet_it(run):
    """The definition: every exact window of the run, kept where its owned box meets ``box``."""
    every = run.exact_windows()
    owned = np.zeros(run.output_shape, np.int64)
    for piece in every:  # the windows partition the output
        owned[tuple(slice(a, b) for a, b in piece.box)] += 1
    assert np.all(owned == 1)
    rng = np.random.default_rng(11)
    for _ in range(40):
        box = []
        for n in run.output_shape:
            lo = int(rng.integers(0, n))
            box.append((lo, int(rng.integers(lo + 1, n + 1))))
        expected = [p for p in every if all(a < hi and b > lo for (a, b), (lo, hi) in zip(p.box, box, strict=True))]
        assert [piece for _, piece in run.windows_in(box)] == expected


def listed_order(run, done):
    """The definition the streamed order keeps: every window meeting a shard not done, in C order,
    and each such shard logged after the last window that reaches it."""
    pieces, waiting, reaches = {}, {}, {}
    for shard_id, box in run.written.shards.boxes():
        if shard_id not in done:
            found = run.windows_in(box)
            waiting[shard_id] = len(found)
            for index, piece in found:
                pieces[index] = piece
                reaches.setdefault(index, []).append(shard_id)
    log = []
    for index in sorted(pieces):
        for shard_id in reaches[index]:
            waiting[shard_id] -= 1
            if not waiting[shard_id]:
                log.append(shard_id)
    return [pieces[i].box for i in sorted(pieces)], log, len(waiting)


@pytest.mark.parametrize(("shape", "window"), [((23, 37, 29), (12, 16, 16)), ((9, 70, 13), (8, 24, 10))])
def test_an_exact_run_streams_the_windows_and_logs_the_shards_of_the_whole_listing(shape, window):
    """The second shape's last windows own parts of two shards on two axes."""
    torch.manual_seed(3)
    net = densepred.from_torch(Smooth().eval(), dims=3, in_channels=1)
    image = np.random.default_rng(5).random((1, *shape), dtype=np.float32)
    run = ModelRun.create(net, image, "exact", window, 0.5, None, None, "cpu")
    shards = len(run.written.shards)
    rng = np.random.default_rng(2)
    for done_ids in [[], list(range(shards)), *(rng.choice(shards, int(rng.integers(1, shards)), replace=False)
                                                for _ in range(6))]:
        done, sink, log = DoneIds(int(i) for i in done_ids), Boxes(), Boxes()
        computed = run.write_exact(sink, done, log, False)
        assert (sink.written, log.written, computed) == listed_order(run, done), sorted(done)


class Boxes:
    """A sink that keeps the boxes written to it, and a done log that keeps the ids."""

    def __init__(self):
        self.written = []

    def write(self, where, values):
        self.written.append(tuple((s.start, s.stop) for s in where))
        assert values.shape[1:] == tuple(s.stop - s.start for s in where)

    def append(self, piece_id):
        self.written.append(piece_id)
