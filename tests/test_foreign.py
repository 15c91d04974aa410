"""Models written elsewhere: tiny U-Nets built here, tiled exactly (against the whole-volume
forward in float64), or blended where the probe finds they cannot be."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

import densepred
from densepred.errors import DensePredError
from densepred.geometry.overlap import padded_size, smallest_window


class UNet(nn.Module):
    """A small U-Net: ``depth`` poolings by 2; same or valid convolutions; batch, instance or no
    norm; transposed-convolution or interpolating (``align_corners=True``) upsampling."""

    def __init__(self, dims=3, depth=2, width=4, classes=3, norm="batch", padding=1, up="transpose"):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        norms = {"batch": nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d,
                 "instance": nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d}
        self.dims, self.padding, self.up_mode = dims, padding, up
        self.pool = (nn.MaxPool3d if dims == 3 else nn.MaxPool2d)(2)

        def block(cin, cout):
            layers = [conv(cin, cout, 3, padding=padding)]
            if norm in norms:
                layers.append(norms[norm](cout, affine=True))
            return nn.Sequential(*layers, nn.ReLU())

        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([block(1 if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
        transpose = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.ups = nn.ModuleList([transpose(widths[i + 1], widths[i], 2, stride=2) if up == "transpose"
                                  else conv(widths[i + 1], widths[i], 1) for i in range(depth)])
        self.up = nn.ModuleList([block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = conv(width, classes, 1)

    def forward(self, x):
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.ups))):
            if self.up_mode == "transpose":
                x = self.ups[i](x)
            else:
                mode = "trilinear" if self.dims == 3 else "bilinear"
                x = self.ups[i](nn.functional.interpolate(x, scale_factor=2, mode=mode, align_corners=True))
            skip = skips.pop()
            x = self.up[i](torch.cat([_centre(skip, x.shape[2:]), x], dim=1))
        return self.head(x)


def _centre(x, shape):
    """Crop-and-concat: the middle of a skip connection (valid U-Nets)."""
    starts = [(a - b) // 2 for a, b in zip(x.shape[2:], shape, strict=True)]
    return x[(slice(None), slice(None), *(slice(s, s + n) for s, n in zip(starts, shape, strict=True)))]


class Strided2D(nn.Module):
    """A 2D encoder-decoder with stride 32: five stride-2 convolutions and five transposed ones."""

    def __init__(self):
        super().__init__()
        widths = [1, 4, 6, 8, 8, 8]
        self.enc = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b),
                                                 nn.ReLU()) for a, b in itertools.pairwise(widths)])
        self.dec = nn.Sequential(*[nn.Sequential(nn.ConvTranspose2d(b, a if a > 1 else 4, 2, stride=2), nn.ReLU())
                                   for a, b in reversed(list(itertools.pairwise(widths)))])
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.head(self.dec(self.enc(x)))


def trained_looking(model, seed=0):
    """Random weights and batch-norm statistics, float64, eval mode."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval()


def whole(model, volume, factor, window, activation=None):
    """The definition: one forward of the volume zero-padded at its high end as the tiling
    pads it, cropped to the volume (float64)."""
    size = [padded_size(s, w, f) for s, w, f in zip(volume.shape, window, factor, strict=True)]
    padded = np.zeros(size, np.float64)
    padded[tuple(slice(0, s) for s in volume.shape)] = volume
    with torch.inference_mode():
        logits = model(torch.from_numpy(padded)[None, None])
    out = (activation or (lambda t: torch.softmax(t, dim=1)))(logits)[0].numpy()
    crop = [(p - o) // 2 for p, o in zip(size, logits.shape[2:], strict=True)]
    return out[(slice(None), *(slice(0, s - 2 * c) for s, c in zip(volume.shape, crop, strict=True)))]


@pytest.fixture
def volume():
    return np.random.default_rng(5).random((39, 47, 49), dtype=np.float32)


def test_a_same_padded_batch_norm_unet_tiles_exactly(volume):
    model = trained_looking(UNet())
    net = densepred.from_torch(model, dims=3, in_channels=1)
    assert net.contract.exact
    assert net.contract.factor == (4, 4, 4)
    assert net.contract.crop == (0, 0, 0)
    assert all(a > 0 and b > 0 for a, b in net.contract.context)
    window = (36, 40, 44)  # several windows on every axis
    got = densepred.predict_dense(net, volume, mode="exact", tile_shape=window)
    expected = whole(model, volume, net.contract.factor, window)
    assert got.shape == expected.shape == (3, *volume.shape)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_valid_convolution_unet_tiles_exactly_with_a_smaller_output():
    model = trained_looking(UNet(dims=3, depth=2, padding=0), seed=1)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    crop, factor = net.contract.crop, net.contract.factor
    assert net.contract.exact
    assert factor == (4, 4, 4)
    assert min(crop) > 0
    assert net.contract.valid((42, 42, 42))
    assert not net.contract.valid((44, 44, 44))
    window = (42, 42, 42)
    volume = np.random.default_rng(6).random((42 + 4 * 3, 42 + 4 * 5, 42 + 4), dtype=np.float32)
    got = densepred.predict_dense(net, volume, mode="exact", tile_shape=window)
    expected = whole(model, volume, factor, window)
    assert got.shape == expected.shape == (3, *(s - 2 * c for s, c in zip(volume.shape, crop, strict=True)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_an_instance_norm_unet_is_flagged_and_blended(volume, caplog):
    model = trained_looking(UNet(norm="instance"))
    net = densepred.from_torch(model, dims=3, in_channels=1)
    assert not net.contract.exact
    assert "InstanceNorm3d" in net.contract.reason
    with pytest.raises(DensePredError, match=r"mode 'exact' is impossible.*InstanceNorm3d"):
        densepred.predict_dense(net, volume, mode="exact", tile_shape=24)
    with caplog.at_level(logging.WARNING, logger="densepred"):
        got = densepred.predict_dense(net, volume, tile_shape=24)
    assert "blending" in caplog.text
    assert got.shape == (3, *volume.shape)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)


def test_a_stride_32_encoder_decoder_in_2d_tiles_exactly():
    model = trained_looking(Strided2D(), seed=2)
    net = densepred.from_torch(model, dims=2, in_channels=1)
    assert net.contract.exact
    assert net.contract.factor == (32, 32)
    image = np.random.default_rng(8).random((300, 229), dtype=np.float32)
    smallest = smallest_window(32, 0, net.contract.context[0], 32)
    window = (smallest, smallest + 32)
    got = densepred.predict_dense(net, image, mode="exact", tile_shape=window)
    np.testing.assert_allclose(got, whole(model, image, (32, 32), window), rtol=0, atol=1e-6)


def test_align_corners_upsampling_is_found_not_shift_equivariant(volume):
    model = trained_looking(UNet(depth=1, up="interpolate"), seed=3)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    assert not net.contract.exact
    assert "not shift-equivariant" in net.contract.reason
    with pytest.raises(DensePredError, match="impossible"):
        densepred.predict_dense(net, volume, mode="exact", tile_shape=24)


def test_flip_tta_averages_logits_exactly_like_the_whole_volume(volume):
    model = trained_looking(UNet(), seed=4)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    window = (36, 40, 40)
    got = densepred.predict_dense(net, volume, mode="exact", tile_shape=window, tta=[1, 2])
    size = [padded_size(s, w, 4) for s, w in zip(volume.shape, window, strict=True)]
    padded = torch.zeros(1, 1, *size, dtype=torch.float64)
    padded[(0, 0, *(slice(0, s) for s in volume.shape))] = torch.from_numpy(volume.astype(np.float64))
    with torch.inference_mode():
        views = [model(padded.flip(d)).flip(d) if d else model(padded) for d in ([], [3], [4], [3, 4])]
    expected = torch.softmax(sum(views) / 4, dim=1)[0].numpy()[(slice(None), *(slice(0, s) for s in volume.shape))]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_blend_weights_sum_to_one_an_identity_model_returns_its_input():
    model = nn.Conv3d(1, 1, 1, bias=False).double()
    model.weight.data.fill_(1.0)
    net = densepred.from_torch(model, dims=3, in_channels=1, output="identity")
    volume = np.random.default_rng(9).random((23, 31, 17), dtype=np.float32)
    got = densepred.predict_dense(net, volume, mode="blend", tile_shape=(8, 12, 8), overlap=0.5)
    np.testing.assert_allclose(got[0], volume, rtol=1e-6)


def test_blend_of_an_exact_model_is_close_and_exact_is_closer(volume):
    model = trained_looking(UNet(), seed=5)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    expected = whole(model, volume, (4, 4, 4), (40, 40, 40))
    blend = densepred.predict_dense(net, volume, mode="blend", tile_shape=40)
    exact = densepred.predict_dense(net, volume, mode="exact", tile_shape=40)
    assert np.abs(exact - expected).max() < 1e-6 < np.abs(blend - expected).max() < 0.5


def test_mistakes_name_what_is_valid(volume):
    net = densepred.from_torch(trained_looking(UNet()), dims=3, in_channels=1)
    with pytest.raises(DensePredError, match=r"too small for exact tiling.*smallest valid window is \d+"):
        densepred.predict_dense(net, volume, mode="exact", tile_shape=8)
    with pytest.raises(DensePredError, match=r"window \[34, 34, 34\] is invalid for this model: it accepts 4 \+ k\*4"):
        densepred.predict_dense(net, volume, mode="exact", tile_shape=34)
    with pytest.raises(DensePredError, match="tta 'rotations' is invalid"):
        densepred.predict_dense(net, volume, tta="rotations")
    with pytest.raises(DensePredError, match="mode 'mfp' is invalid for a model from from_torch"):
        densepred.predict_dense(net, volume, mode="mfp")
    sigmoid = densepred.from_torch(trained_looking(UNet()), dims=3, in_channels=1, output="sigmoid")
    with pytest.raises(DensePredError, match="needs channel_map"):
        densepred.predict_dense(sigmoid, volume, tta="flips")
    with pytest.raises(DensePredError, match="output 'logits' is invalid"):
        densepred.from_torch(nn.Conv3d(1, 1, 1), dims=3, in_channels=1, output="logits")


def test_the_contract_can_be_given_instead_of_probed():
    model = trained_looking(UNet())
    given = densepred.TilingContract(factor=(4, 4, 4), crop=(0, 0, 0), context=((30, 30),) * 3, exact=True)
    net = densepred.from_torch(model, dims=3, in_channels=1, contract=given)
    assert net.contract == given
    assert densepred.from_torch(model, dims=3, in_channels=1, context=((30, 30),) * 3).contract.context[0] == (30, 30)


def test_a_window_larger_than_the_volume_is_fitted_to_it_and_needs_no_padding():
    model = trained_looking(UNet(), seed=6)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    volume = np.random.default_rng(4).random((32, 61, 53), dtype=np.float32)  # z: a multiple of the factor
    got = densepred.predict_dense(net, volume, mode="exact", tile_shape=(64, 36, 40))
    np.testing.assert_allclose(got, whole(model, volume, (4, 4, 4), (32, 36, 40)), rtol=0, atol=1e-6)


# 10 s: make test-slow. The default run writes a small model's exact windows into a zarr out= and
# refuses blending into it (test_python_arrays)
@pytest.mark.slow
def test_exact_streams_into_an_array_like_and_blend_into_it_is_refused(volume, tmp_path):
    import zarr

    model = trained_looking(UNet(), seed=8)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    expected = densepred.predict_dense(net, volume, mode="exact", tile_shape=40)
    out = zarr.create_array(tmp_path / "o.zarr", shape=expected.shape, chunks=(3, 16, 32, 32), dtype="float64")
    assert densepred.predict_dense(net, volume, mode="exact", tile_shape=40, out=out) is out
    np.testing.assert_array_equal(out[:], expected)
    with pytest.raises(DensePredError, match="file to file"):
        densepred.predict_dense(net, volume, mode="blend", tile_shape=40, out=out)


def test_a_probed_contract_is_cached_on_disk_and_reused(monkeypatch, tmp_path):
    from densepred.networks import contract, contract_sizes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = trained_looking(UNet(), seed=9)
    first = densepred.from_torch(model, dims=3, in_channels=1).contract
    # sizes, verdict, and the finest factor's choice (contract_sizes.finest_verdict)
    assert len(list((tmp_path / "densepred" / "contracts").glob("*.json"))) == 3

    def no_probe(*args):
        raise AssertionError("probed again")

    monkeypatch.setattr(contract_sizes, "first_forward", no_probe)
    monkeypatch.setattr(contract, "_verdict", no_probe)
    monkeypatch.setattr(contract_sizes, "size_step", no_probe)
    assert densepred.from_torch(model, dims=3, in_channels=1).contract == first
    with torch.no_grad():
        model.head.weight.add_(0.01)  # other weights: another key
    with pytest.raises(AssertionError, match="probed again"):
        densepred.from_torch(model, dims=3, in_channels=1)


def per_slice(net, stack, **options):
    """The definition for a stack: the 2D model's prediction of every slice on its own."""
    return np.stack([densepred.predict_dense(net, image, **options) for image in stack], axis=1)


@pytest.mark.parametrize(("mode", "window", "tol"), [("exact", (3, 40, 36), 1e-6), ("blend", (24, 20), 1e-5)])
def test_a_2d_model_over_a_stack_equals_every_slice_on_its_own(mode, window, tol):
    model = trained_looking(UNet(dims=2), seed=4)
    net = densepred.from_torch(model, dims=2, in_channels=1)
    stack = np.random.default_rng(14).random((7, 57, 49), dtype=np.float32)
    got = densepred.predict_dense(net, stack, mode=mode, tile_shape=window)
    expected = per_slice(net, stack, mode=mode, tile_shape=window[-2:])
    assert got.shape == (3, *stack.shape)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)


def test_flips_over_a_stack_flip_y_and_x_only():
    model = trained_looking(UNet(dims=2), seed=4)
    net = densepred.from_torch(model, dims=2, in_channels=1)
    stack = np.random.default_rng(15).random((4, 41, 39), dtype=np.float32)
    got = densepred.predict_dense(net, stack, mode="blend", tile_shape=(24, 20), tta=[1])
    expected = per_slice(net, stack, mode="blend", tile_shape=(24, 20), tta=[1])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_a_float32_model_runs_channels_last_on_the_cpu_and_still_tiles_exactly(dims):
    from densepred.networks.devices import fast_memory_format

    model = trained_looking(UNet(dims=dims), seed=3).float()
    assert fast_memory_format(model, torch.device("cpu")) == (torch.channels_last_3d if dims == 3
                                                              else torch.channels_last)
    assert fast_memory_format(model.double(), torch.device("cpu")) is None  # no float64 kernels for it
    assert fast_memory_format(UNet(dims=dims, norm="instance"), torch.device("cpu")) is None
    model = model.float()
    volume = np.random.default_rng(7).random((39, 47, 49)[3 - dims:], dtype=np.float32)
    net = densepred.from_torch(model, dims=dims, in_channels=1)
    window = (36, 40, 44)[3 - dims:]
    got = densepred.predict_dense(net, volume, mode="exact", tile_shape=window)
    assert all(p.is_contiguous() for p in model.parameters())  # the run worked on a copy
    expected = whole(model.double(), volume, net.contract.factor, window)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def _windows(caplog):
    return [line.split("exact window ")[1].split(":")[0] for line in caplog.text.splitlines() if "exact window" in line]


def test_without_a_window_exact_takes_the_largest_the_memory_limit_holds(volume, caplog):
    from densepred.system import resident_bytes

    model = trained_looking(UNet(), seed=8)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    densepred.predict_dense(net, volume[:8, :8, :8], mode="exact")  # probed: the contract and the memory
    results = {}
    with caplog.at_level(logging.INFO, logger="densepred"):
        for room in (48, 24, None):  # MiB over what the process holds, and the default
            limit = None if room is None else resident_bytes() + room * 2**20
            results[room] = densepred.predict_dense(net, volume, mode="exact", memory_limit=limit)
    at_48, at_24, default = (np.prod(json.loads(w)) for w in _windows(caplog))
    assert at_24 < at_48 <= default
    assert default == np.prod([-(-s // 4) * 4 for s in volume.shape])  # the default holds the whole volume
    expected = whole(model, volume, net.contract.factor, (36, 36, 36))
    for got in results.values():  # every window is exact
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(densepred.DensePredError, match=r"memory limit of .* is too small"):
        densepred.predict_dense(net, volume, mode="exact", memory_limit=resident_bytes() + 2**20)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="densepred"):  # auto blends instead, with a warning
        got = densepred.predict_dense(net, volume, mode="auto", memory_limit=resident_bytes() + 2**20)
    assert "blending overlapping windows instead" in caplog.text
    np.testing.assert_array_equal(got, densepred.predict_dense(net, volume, mode="blend"))
