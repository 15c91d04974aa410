"""predict_dense against the window-by-window definition, over modes, tiles and mirroring."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import zarr

import densepred
from densepred import DensePredError, class_probabilities, predict_dense
from tests.conftest import NETS, make_net, reference_logits, softmax


def tiles_for(net, image_shape, mode):
    """A few valid tile shapes of different sizes, from the smallest valid to larger ones."""
    g = net.geometry
    needed = "mfp" if mode == "mfp" else "dilated"
    smallest = g.smallest_valid(needed)
    tiles = [smallest, tuple(s + t for s, t in zip(smallest, g.stride, strict=True))]
    if needed == "dilated":
        tiles.append(tuple(f + 1 + a for a, f in enumerate(g.fov)))  # odd, arbitrary
    return tiles


MIRRORED_SLOW = ("dilated", "naive", "stream", "auto")  # mirrored runs of these take 8-24 s each: make test-slow


def slow_case(name: str, mode: str, mirror: bool) -> bool:
    """The cases left to make test-slow: mirrored runs of the slower engines, and shift-and-stitch
    (naive, the reference engine) of 3D nets, 7-9 s each; 2D nets keep naive in the default run."""
    return (mirror and mode in MIRRORED_SLOW) or (mode == "naive" and name.startswith("3d"))


@pytest.mark.parametrize(("name", "mode", "mirror"), [
    pytest.param(name, mode, mirror, marks=[pytest.mark.slow] if slow_case(name, mode, mirror) else [])
    for mirror in (False, True) for mode in ("mfp", "dilated", "naive", "stream", "auto") for name in sorted(NETS)])
def test_predict_dense_equals_window_by_window(name, mode, mirror, rng):
    net = make_net(NETS[name], seed=7 + len(name))
    g = net.geometry
    shape = tuple(f + 3 * t + 2 + a for a, (f, t) in enumerate(zip(g.fov, g.stride, strict=True)))
    image = rng.standard_normal((net.config.in_channels, *shape)).astype(np.float32)
    expected = softmax(reference_logits(net, image.astype(np.float64), mirror=mirror))
    for tile in tiles_for(net, shape, mode):
        size = corner(tile) if tile == g.fov and not mirror else shape
        out = size if mirror else g.dense_output_shape(size)
        got = predict_dense(net, image[(slice(None), *(slice(0, n) for n in size))], mirror=mirror, tile_shape=tile,
                            mode=mode)
        assert got.dtype == np.float32
        assert got.shape == (expected.shape[0], *out)
        np.testing.assert_allclose(got, expected[(slice(None), *(slice(0, n) for n in out))], rtol=0, atol=1e-4,
                                   err_msg=f"tile {tile}")


def corner(tile):
    """The image on which a tile of one output voxel (the field of view, the smallest tile a
    dilated engine takes) is checked: a corner of the image with 3, 4 and 5 tiles along its axes,
    not the thousands of tiles (5 s) of the whole image. Without mirroring an output voxel
    depends only on its window, so the corner's result is the definition's."""
    return tuple(f + 2 + a for a, f in enumerate(tile))


def test_default_tile_and_batches_give_the_same_result(rng):
    net = make_net(NETS["3d_aniso"], seed=11)
    image = rng.standard_normal((23, 61, 47)).astype(np.float32)
    expected = softmax(reference_logits(net, image[None].astype(np.float64)))
    np.testing.assert_allclose(predict_dense(net, image), expected, rtol=0, atol=1e-4)
    tile = net.geometry.smallest_valid("mfp")
    batched = predict_dense(net, image, tile_shape=tile, batch_size=5, mode="mfp")
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-4)


def test_tile_larger_than_the_image_is_clipped(rng):
    net = make_net(NETS["2d_pool2"], seed=2)
    image = rng.standard_normal((29, 33)).astype(np.float32)
    expected = softmax(reference_logits(net, image[None].astype(np.float64), mirror=True))
    for mode in ("mfp", "dilated", "naive"):
        tile = net.geometry.nearest_valid((200, 200), "mfp")[1]
        got = predict_dense(net, image, tile_shape=tile, mode=mode, mirror=True)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_mirror_on_an_image_smaller_than_the_field_of_view(rng):
    net = make_net(NETS["2d_pool2"], seed=4)
    image = rng.standard_normal((7, 12)).astype(np.float32)  # FOV is 16
    expected = softmax(reference_logits(net, image[None].astype(np.float64), mirror=True))
    np.testing.assert_allclose(predict_dense(net, image, mirror=True), expected, rtol=0, atol=1e-4)


def test_h5py_and_zarr_inputs_are_read_tile_by_tile(tmp_path, rng):
    net = make_net(NETS["3d_aniso"], seed=12)
    image = rng.random((1, 15, 50, 44)).astype(np.float32)
    expected = predict_dense(net, image, mode="mfp", tile_shape=net.geometry.smallest_valid("mfp"))
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = image
    z = zarr.create_array(tmp_path / "raw.zarr", shape=image.shape, chunks=(1, 8, 16, 16), dtype="float32")
    z[...] = image
    reads = []

    class Recording:
        shape, dtype = image.shape, image.dtype

        def __getitem__(self, key):
            reads.append(key)
            return image[key]

    tile = net.geometry.smallest_valid("mfp")
    with h5py.File(tmp_path / "raw.h5") as f:
        np.testing.assert_array_equal(predict_dense(net, f["raw"], mode="mfp", tile_shape=tile), expected)
    np.testing.assert_array_equal(predict_dense(net, z, mode="mfp", tile_shape=tile), expected)
    np.testing.assert_array_equal(predict_dense(net, Recording(), mode="mfp", tile_shape=tile), expected)
    for key in reads:  # every read is one tile's window, never the whole volume
        assert all(s.stop - s.start == t for s, t in zip(key[1:], tile, strict=True))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_integer_input_is_divided_by_its_dtype_maximum(dtype, rng):
    net = make_net(NETS["2d_pool2"], seed=6)
    info = np.iinfo(dtype)
    image = rng.integers(max(info.min, -1000), min(info.max, 1000), size=(37, 41)).astype(dtype)
    got = predict_dense(net, image, mode="dilated")
    expected = softmax(reference_logits(net, image[None] / float(info.max)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_class_probabilities_of_patches_equal_the_dense_prediction(rng):
    net = make_net(NETS["2d_mlp"], seed=8)
    fov = net.geometry.fov
    patches = rng.standard_normal((9, *fov))
    got = class_probabilities(net, patches, batch_size=4)
    expected = softmax(reference_logits(net, patches[0][None]))
    assert got.shape == (9, 2)
    for i, patch in enumerate(patches):
        dense = predict_dense(net, patch.astype(np.float32), mode="naive")
        np.testing.assert_allclose(got[i], dense[:, 0, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[0], expected[:, 0, 0], rtol=0, atol=1e-5)


def test_class_probabilities_of_feature_vectors(rng):
    cfg = densepred.config_from_dict({"network": {"dims": 0, "in_channels": 5, "n_classes": 3,
                                                  "mlp": [8, 4], "dropout": 0.5, "batchnorm": True}})
    torch.manual_seed(0)
    net = densepred.build_net(cfg)
    x = rng.standard_normal((17, 5)).astype(np.float32)
    got = class_probabilities(net, x, batch_size=4)
    net.eval()
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-6)


# -- errors a user can cause ------------------------------------------------------------

def test_invalid_mfp_tile_lists_the_nearest_valid_tiles():
    net = make_net(NETS["2d_pool2"])
    with pytest.raises(DensePredError, match=r"nearest valid tile shapes: \[.*\] or \[.*\]"):
        predict_dense(net, np.random.rand(60, 60), tile_shape=(30, 30), mode="mfp")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_shape": 3}, "smaller than the field of view"),
        ({"tile_shape": (30,)}, r"expected a positive integer, or one per axis: \(y, x\)"),
        ({"mode": "fast"}, "valid: auto, mfp, dilated, naive"),
        ({"batch_size": 0}, "positive integer"),
        ({"device": "gpu7"}, "device 'gpu7' is invalid"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    net = make_net(NETS["2d_pool2"])
    with pytest.raises(DensePredError, match=message):
        predict_dense(net, np.random.rand(40, 40), **kwargs)


def test_image_errors():
    net = make_net(NETS["2d_pool2"])
    with pytest.raises(DensePredError, match=r"smaller than the network's field of view.*mirror=True"):
        predict_dense(net, np.random.rand(10, 40))
    with pytest.raises(DensePredError, match=r"expected \(1, y, x\) or \(y, x\) for one channel, or a stack"):
        predict_dense(net, np.random.rand(2, 3, 40, 40))  # (2, 40, 40) is a stack of two images
    with pytest.raises(DensePredError, match="class_probabilities"):
        predict_dense(densepred.build_net(densepred.config_from_dict(
            {"network": {"dims": 0, "in_channels": 3, "n_classes": 2}})), np.random.rand(4, 3))
    with pytest.raises(DensePredError, match="patches the size of the field of view"):
        class_probabilities(net, np.random.rand(3, 20, 20))
