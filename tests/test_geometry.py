"""Geometry and tiling arithmetic: formulas from DESIGN §2 and properties that must hold."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from densepred import DensePredError, Geometry, config_from_dict
from densepred.config import network_geometry
from densepred.geometry import (
    LayerGeometry,
    TilePlan,
    axis_starts,
    columns,
    default_output_tile,
    reflect_index,
    source_window,
    stream_shards,
)


def geometry_of(layers):
    return Geometry([LayerGeometry(f"l{i}", (k,), (p,), 1, 1) for i, (k, p) in enumerate(layers)])


layer_stacks = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=4)


def simulate(layers, n, mode):
    """Per-layer validity by direct simulation of the sizes (independent of the implementation)."""
    c = n
    for k, p in layers:
        c -= k - 1
        if c < p:
            return False
        if mode == "plain":
            if c % p:
                return False
            c //= p
        else:
            if (c - p + 1) % p:
                return False
            c = (c - p + 1) // p
    return c >= 1


def test_m36_matches_the_published_numbers():
    cfg = config_from_dict({"network": {
        "dims": 3, "in_channels": 1, "n_classes": 3,
        "layers": [{"filters": 80, "kernel": 2, "pool": 2}, {"filters": 80, "kernel": 3, "pool": 2},
                   {"filters": 80, "kernel": 3, "pool": 2}] + [{"filters": 80, "kernel": 3}] * 3,
        "output_kernel": 3}})
    g = network_geometry(cfg.network)
    assert g.fov == (85, 85, 85)
    assert g.stride == (8, 8, 8)
    assert g.offset == (42, 42, 42)
    assert round(g.flops_per_voxel / 1e6, 3) == 1.742
    assert g.is_valid((108,) * 3, "mfp")
    assert g.dense_output_shape((108,) * 3) == (24,) * 3
    # shift-and-stitch costs 15.3x the useful FLOPs of MFP on an infinite volume (ZNNi)
    per_layer = [layer.flops_per_voxel for layer in g.layers]
    strides_before = [1, 2, 4, 8, 8, 8, 8]
    naive = sum(w * (8 / s) ** 3 for w, s in zip(per_layer, strides_before, strict=True))
    assert round(naive / g.flops_per_voxel, 1) == 15.3


def test_n4_mlp_head_becomes_a_convolution_over_the_last_feature_map():
    cfg = config_from_dict({"network": {
        "dims": 2, "in_channels": 1, "n_classes": 2,
        "layers": [{"filters": 48, "kernel": k, "pool": 2} for k in (4, 5, 4, 4)],
        "mlp": [200], "patch_size": 95}})
    g = network_geometry(cfg.network)
    assert g.fov == (95, 95)
    assert g.stride == (16, 16)
    assert [layer.kernel for layer in g.layers[-2:]] == [(3, 3), (1, 1)]


@settings(max_examples=200, deadline=None)
@given(layers=layer_stacks, n=st.integers(1, 200))
def test_validity_and_suggestions(layers, n):
    g = geometry_of(layers)
    fov, t = g.fov[0], g.stride[0]
    for mode in ("plain", "mfp"):
        valid = simulate(layers, n, mode)
        assert g.is_valid((n,), mode) == valid
        below, above = g.nearest_valid((n,), mode)
        assert simulate(layers, above[0], mode)
        assert above[0] >= n
        assert not any(simulate(layers, m, mode) for m in range(n, above[0]))
        if below is not None:
            assert simulate(layers, below[0], mode)
            assert below[0] <= n
            assert not any(simulate(layers, m, mode) for m in range(below[0] + 1, n + 1))
        else:
            assert not any(simulate(layers, m, mode) for m in range(1, n + 1))
    # DESIGN §2: the valid sizes are arithmetic progressions
    assert g.is_valid((n,), "plain") == (n >= fov and (n - fov) % t == 0)
    assert g.is_valid((n,), "mfp") == (n >= fov - 1 + t and (n - fov + 1) % t == 0)
    assert g.is_valid((n,), "dilated") == (n >= fov)
    if n >= fov:
        assert g.dense_output_shape((n,)) == (n - fov + 1,)
        assert g.plain_output_shape((n,)) == ((n - fov) // t + 1,)
    if g.is_valid((n,), "mfp"):
        assert g.dense_output_shape((n,))[0] % t == 0


@settings(max_examples=200, deadline=None)
@given(extent=st.integers(1, 300), tile=st.integers(1, 300))
def test_tiles_cover_every_output_voxel_and_stay_inside(extent, tile):
    tile = min(tile, extent)
    starts = axis_starts(extent, tile)
    covered = np.zeros(extent, int)
    for s in starts:
        assert s >= 0
        assert s + tile <= extent
        covered[s:s + tile] += 1
    assert covered.min() == 1  # every voxel covered
    assert covered.sum() - extent < tile  # only the last tile overlaps its neighbour
    assert len(starts) == math.ceil(extent / tile)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), pad=st.integers(0, 60), start=st.integers(0, 80), length=st.integers(1, 60))
def test_mirror_indices_equal_numpy_reflect_padding(n, pad, start, length):
    data = np.arange(n) * 10 + 3
    padded = np.pad(data, (pad, start + length + 1), mode="reflect")
    assert [data[reflect_index(i - pad, n)] for i in range(len(padded))] == list(padded)
    lo, hi, take = source_window(start, length, pad, n)
    window = data[lo:hi] if take is None else data[lo:hi][take]
    assert list(window) == list(padded[start:start + length])


def test_tile_plan_shapes_and_errors():
    plan = TilePlan.create((50, 40), fov=(9, 9), input_tile=(24, 24), mirror=False)
    assert plan.output_shape == (42, 32)
    assert plan.output_tile == (16, 16)
    assert len(plan) == 6
    mirrored = TilePlan.create((50, 40), fov=(9, 8), input_tile=(24, 24), mirror=True)
    assert mirrored.output_shape == (50, 40)
    assert mirrored.pad_low == (4, 3)
    assert mirrored.pad_high == (4, 4)
    with pytest.raises(DensePredError, match="mirror=True"):
        TilePlan.create((5, 40), fov=(9, 9), input_tile=(24, 24), mirror=False)


@settings(max_examples=50, deadline=None)
@given(layers=layer_stacks, extent=st.integers(1, 500), budget=st.integers(10**2, 10**6))
def test_default_tile_fits_the_budget_and_is_mfp_valid(layers, extent, budget):
    g = geometry_of(layers)
    tile = default_output_tile(g, (extent,), "auto", budget)
    assert 1 <= tile[0] <= extent
    assert tile[0] == extent or tile[0] % g.stride[0] == 0
    if tile[0] % g.stride[0] == 0:
        assert g.is_valid(g.input_shape_for(tile), "mfp")


def test_flop_counts_follow_the_modes():
    g = geometry_of([(2, 2), (3, 2), (3, 1)])
    n = g.smallest_valid("mfp")[0] + 4 * g.stride[0]
    useful = g.dense_output_shape((n,))[0] * g.flops_per_voxel
    assert g.flops((n,), "mfp") >= useful
    assert g.flops((n,), "naive") > g.flops((n,), "mfp")


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 400), window=st.integers(2, 160), factor=st.sampled_from([1, 2, 4, 8, 16, 32]),
       crop=st.integers(0, 12), low=st.integers(0, 60), high=st.integers(0, 60))
def test_exact_windows_partition_the_output_and_own_only_trusted_voxels(size, window, factor, crop, low, high):
    from densepred.geometry.overlap import exact_axis, exact_step, padded_size

    assume(window - 2 * crop >= 1)
    try:
        windows = exact_axis(size, window, factor, crop, (low, high))
    except DensePredError:
        assume(False)
    total = padded_size(size, window, factor)
    assert windows[0].own_lo == 0
    assert windows[-1].own_hi == total - 2 * crop
    for before, after in itertools.pairwise(windows):
        assert before.own_hi == after.own_lo
        assert before.start < after.start
    step = exact_step(window, factor, crop, (low, high)) if len(windows) > 1 else None
    for w in windows:
        assert 0 <= w.start <= total - window
        assert w.start % factor == 0
        trusted_lo = w.start + (low if w.start > 0 else 0)
        trusted_hi = w.start + window - 2 * crop - (high if w.start + window < total else 0)
        assert trusted_lo <= w.own_lo < w.own_hi <= trusted_hi
        assert step is None or w.own_lo % step == 0  # shards of a multiple of the step are owned whole


def test_the_examples_in_the_geometry_docstrings_hold():
    import doctest
    import importlib
    import pkgutil

    import densepred.geometry

    for found in pkgutil.iter_modules(densepred.geometry.__path__):
        module = importlib.import_module(f"densepred.geometry.{found.name}")
        failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failures == 0, f"{module.__name__}: {failures} example(s) failed"


def test_the_shards_a_box_meets_carry_the_ids_of_the_whole_grid():
    from densepred.geometry import box_above, shard_boxes, shards_meeting, source_box

    every = dict(shard_boxes((9, 20, 7), (4, 6, 7)))
    met = dict(shards_meeting((9, 20, 7), (4, 6, 7), ((3, 5), (5, 13), (0, 7))))
    assert met == {i: every[i] for i in (0, 1, 2, 4, 5, 6)}
    # a box on the step grid maps to the box above it, and back; one off the grid does not
    above = box_above(((4, 9), (6, 20), (0, 7)), (2, 2, 1), (9, 20, 7))
    assert above == ((2, 5), (3, 10), (0, 7))
    assert source_box(above, (2, 2, 1), (9, 20, 7)) == ((4, 9), (6, 20), (0, 7))
    assert box_above(((3, 9), (6, 20), (0, 7)), (2, 2, 1), (9, 20, 7)) is None
    assert box_above(((4, 7), (6, 20), (0, 7)), (2, 2, 1), (9, 20, 7)) is None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(1, 13), min_size=1, max_size=3), tile=st.integers(1, 5),
       batch_size=st.integers(1, 5), done_fraction=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_a_lazy_tile_list_is_the_listed_tiles_and_a_resume_runs_the_same_batches(shape, tile, batch_size,
                                                                                 done_fraction, seed):
    plan = TilePlan.create(shape, (1,) * len(shape), (tile,) * len(shape), mirror=False)
    listed = list(plan.tiles())
    lazy = plan.all_tiles()
    assert len(lazy) == len(listed)
    assert list(lazy) == listed
    assert [lazy[i] for i in range(-len(listed), len(listed))] == listed + listed
    assert lazy[1:len(listed):2] == listed[1::2]
    assert lazy.voxels() == math.prod(shape) == sum(math.prod(t.owned_shape) for t in listed)
    rng = np.random.default_rng(seed)
    done = {i for i in range(len(listed)) if rng.random() < done_fraction}
    # the definition: every fixed batch of the C-ordered tiles that has a tile not done
    batches = [listed[i:i + batch_size] for i in range(0, len(listed), batch_size)]
    expected = [t for batch in batches if any(plan.tile_id(t) not in done for t in batch) for t in batch]
    todo = plan.batches_to_run(done, batch_size)
    assert list(todo) == expected
    assert [todo[i] for i in range(len(todo))] == expected
    assert todo.voxels() == sum(math.prod(t.owned_shape) for t in expected)


def test_a_plan_of_a_billion_tiles_is_listed_without_making_them():
    plan = TilePlan.create((1000, 1000, 1000), (1, 1, 1), (1, 1, 1), mirror=False)
    tiles = plan.batches_to_run({0, 1, 5}, batch_size=2)  # resumed: batch 0 done, batch 2 only half
    assert len(tiles) == 10**9 - 2
    assert tiles[0].index == (0, 0, 2)
    assert tiles[-1].index == (999, 999, 999)
    assert tiles.ranges == [range(2, 10**9)]


boxes = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 400), st.integers(1, 70)), min_size=2, max_size=3)


@given(boxes, st.integers(1, 5))
@settings(max_examples=300, deadline=None)
def test_columns_partition_a_box_across_its_first_axis_without_splitting_a_unit(axes, count):
    box = tuple((a, a + n) for a, n, _ in axes)
    unit = tuple(u for _, _, u in axes)
    cut = columns(box, unit, count)
    assert cut
    assert len(cut) <= count
    varying = {i for c in cut for i, (r, b) in enumerate(zip(c, box, strict=True)) if r != b}
    assert 0 not in varying
    assert len(varying) <= 1  # whole along the first axis, cut along one other
    for axis in varying:
        edges = [c[axis] for c in cut]
        assert edges[0][0] == box[axis][0]
        assert edges[-1][1] == box[axis][1]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))  # side by side: a partition
        assert all(a < b for a, b in edges)
        assert all(b % unit[axis] == 0 for _, b in edges[:-1])  # cuts between units, none split
        assert len(cut) <= (box[axis][1] - 1) // unit[axis] - box[axis][0] // unit[axis] + 1
    if count > 1 and len(cut) == 1:  # not cut: no axis has a unit boundary inside the box
        assert all(a // u == (b - 1) // u for (a, b), u in zip(box[1:], unit[1:], strict=True))
    if len(cut) > 1:  # as even as the cuts allow: no column holds twice another's units and more
        axis = varying.pop()
        sizes = [(b - 1) // unit[axis] - a // unit[axis] + 1 for a, b in (c[axis] for c in cut)]
        assert max(sizes) <= 2 * min(sizes) + 1


@given(st.lists(st.integers(1, 2000), min_size=2, max_size=3))
def test_a_streams_shards_divide_its_tile(tile):
    shards = stream_shards(tile)
    assert all(t % s == 0 for t, s in zip(tile, shards, strict=True))  # tiles (and blocks of them) are whole shards
    assert shards[0] <= 64 or shards[0] == tile[0]
    assert all(s <= 256 or s == t for t, s in zip(tile[1:], shards[1:], strict=True))
    assert all(s >= 64 or s == t for t, s in zip(tile[1:], shards[1:], strict=True))
