"""The three dense engines against the definition, in float64, tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densepred.networks.engines import DenseEngine, interleave_fragments, split_fragments
from tests.conftest import NETS, make_net, reference_logits

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("mode", ["naive", "mfp", "dilated", "stream"])
def test_engine_equals_window_by_window_in_float64(name, mode, rng):
    net = make_net(NETS[name], seed=len(name))
    fov, stride = net.geometry.fov, net.geometry.stride
    # odd sizes that are neither valid for MFP nor multiples of the stride
    shape = tuple(f + 2 * t + 3 for f, t in zip(fov, stride, strict=True))
    image = rng.standard_normal((net.config.in_channels, *shape))
    expected = reference_logits(net, image)
    got = DenseEngine(net, mode, CPU, torch.float64)(torch.from_numpy(image)[None])[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["naive", "mfp", "dilated", "stream"])
def test_engines_handle_a_batch_of_tiles(mode, rng):
    net = make_net(NETS["3d_aniso"], seed=3)
    tiles = rng.standard_normal((3, 1, 9, 41, 35))
    got = DenseEngine(net, mode, CPU, torch.float64)(torch.from_numpy(tiles)).numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i], reference_logits(net, tiles[i]), rtol=0, atol=1e-10)


def test_engine_uses_running_statistics_even_in_training_mode(rng):
    net = make_net(NETS["2d_pool3_mixed"], seed=5)
    image = rng.standard_normal((2, 30, 31))
    expected = reference_logits(net, image)
    net.train()
    got = DenseEngine(net, "mfp", CPU, torch.float64)(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pool", [(2, 2), (3, 2), (1, 3), (2, 2, 2), (1, 2, 3)])
def test_split_then_interleave_is_the_identity_up_to_fragment_order(pool):
    sizes = [p * (4 + a) for a, p in enumerate(pool)]
    x = torch.arange(2 * 3 * np.prod(sizes), dtype=torch.float64).reshape(2, 3, *sizes)
    fragments = split_fragments(x, pool)
    assert fragments.shape == (2 * np.prod(pool), 3, *(s // p for s, p in zip(sizes, pool, strict=True)))
    # fragment o holds positions o + p*i along each axis
    first = fragments[1]  # batch 0, fragment index 1: offset 1 on the last axis only
    expected = x[(0, slice(None), *(slice(0, None, p) for p in pool[:-1]), slice(1, None, pool[-1]))]
    assert torch.equal(first, expected)
    assert torch.equal(interleave_fragments(fragments, [pool], 2), x)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("slab", [1, 2, 5, 64])
def test_stream_equals_dilated_in_float64_whatever_the_slab(name, slab, rng):
    """Stream lengths that are multiples of nothing, slabs thinner and thicker than any halo."""
    from densepred.networks.engines import dilated_forward, eval_stages, stream_forward

    net = make_net(NETS[name], seed=3)
    g = net.geometry
    stages = eval_stages(net, torch.device("cpu"), torch.float64)
    shape = (g.fov[0] + 17, *(f + 3 for f in g.fov[1:]))
    x = torch.from_numpy(rng.standard_normal((2, net.config.in_channels, *shape)))
    expected = dilated_forward(stages, x)
    got = stream_forward(stages, x, slab)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-10


def test_float32_flags_restore_the_callers_tf32_settings():
    from densepred.networks.precision import precision_flags

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for chosen in ((True, True), (True, False), (False, True)):
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = chosen
            with precision_flags():
                assert not torch.backends.cudnn.allow_tf32
                assert not torch.backends.cuda.matmul.allow_tf32
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == chosen
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_building_and_running_an_engine_leaves_the_process_tf32_settings_alone():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True  # the user's choice
        net = make_net(NETS["2d_pool2"], dtype=torch.float32)
        for mode in ("mfp", "dilated", "naive"):
            DenseEngine(net, mode, torch.device("cpu"))(torch.rand(1, 1, 24, 24))
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True), mode
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("name", ["3d_aniso", "2d_pool3_mixed"])
def test_a_stream_allocates_each_buffer_once_and_equals_dilated(name, rng):
    """Deeper ops get fewer slices from the first slabs; their buffers are sized for the steady
    state at once, so none is replaced (a replaced one left a hole in the heap)."""
    from densepred.networks.engines import StreamState, dilated_forward, eval_stages

    net = make_net(NETS[name], seed=4)
    g = net.geometry
    stages = eval_stages(net, CPU, torch.float64)
    x = torch.from_numpy(rng.standard_normal((1, net.config.in_channels, g.fov[0] + 23, *(f + 5 for f in g.fov[1:]))))
    state = StreamState(stages, g.ndim)
    buffers: list[set[int]] = [set() for _ in state.buffers]
    outputs = []
    for first in range(0, x.shape[2], 4):
        out = state.push(x[:, :, first:first + 4])
        outputs += [] if out is None else [out]
        for seen, buffer in zip(buffers, state.buffers, strict=True):
            seen.update([] if buffer is None else [buffer.data_ptr()])
    assert [len(seen) for seen in buffers] == [1] * len(buffers)
    got, expected = torch.cat(outputs, dim=2), dilated_forward(stages, x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-10
