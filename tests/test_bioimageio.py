"""bioimage.io models: their input preprocessing applied window by window equals the whole image
preprocessed then predicted; their postprocessing's sigmoid or softmax is the activation; zipped
packages read like unpacked ones."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import densepred
from densepred.interfaces.cli import main
from densepred.networks.processing import Step
from densepred.running.compute import preprocess
from tests.test_foreign import UNet, trained_looking, whole
from tests.test_foreign_files import RDF, stored, zoo_package


@pytest.fixture
def zoo_model(tmp_path):
    return zoo_package(tmp_path / "zoo")


def with_steps(net, *steps):
    net.preprocessing = tuple(steps)
    return net


def two_channel_conv():
    torch.manual_seed(2)
    return nn.Conv3d(2, 3, 3, padding=1).double().eval()


def quantile(values, q, axis=None):
    return np.quantile(np.asarray(values, np.float64), q / 100, axis=axis)


def test_zero_mean_unit_variance_over_the_whole_volume_keeps_exact_tiling_exact():
    model = trained_looking(UNet(), seed=9)
    net = with_steps(densepred.from_torch(model, dims=3, in_channels=1), Step("zero_mean_unit_variance"))
    volume = np.random.default_rng(21).normal(130.0, 17.0, (39, 47, 49)).astype(np.float32)
    window = (36, 40, 44)
    got = densepred.predict_dense(net, volume, mode="exact", tile_shape=window)
    x = volume.astype(np.float64)
    expected = whole(model, (x - x.mean()) / (x.std() + 1e-6), net.contract.factor, window)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_per_channel_percentiles_and_fixed_values_follow_their_definitions(monkeypatch):
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", 2 * 23 * 19 * 3)  # measured over several slabs
    model = two_channel_conv()
    net = with_steps(densepred.from_torch(model, dims=3, in_channels=2),
                     Step("scale_linear", {"gain": [2.0, 0.5], "offset": [1.0, -3.0]}),
                     Step("scale_range", {"min_percentile": 1.0, "max_percentile": 99.5}, per_channel=True),
                     Step("clip", {"min": 0.0, "max": 1.0}))
    image = np.random.default_rng(4).gamma(2.0, 40.0, (2, 17, 23, 19)).astype(np.float32)
    got = densepred.predict_dense(net, image, mode="exact", tile_shape=(8, 12, 10))
    per_channel = (slice(None), None, None, None)
    x = image.astype(np.float64) * np.array([2.0, 0.5])[per_channel] + np.array([1.0, -3.0])[per_channel]
    lo = quantile(x.reshape(2, -1), 1.0, axis=1)[:, None, None, None]
    hi = quantile(x.reshape(2, -1), 99.5, axis=1)[:, None, None, None]
    x = np.clip((x - lo) / (hi - lo + 1e-6), 0, 1)
    with torch.inference_mode():
        expected = torch.softmax(model(torch.from_numpy(x)[None]), 1)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_2d_model_over_a_stack_measures_each_slice_as_its_own_sample():
    model = trained_looking(UNet(dims=2), seed=4)
    step = Step("scale_range", {"min_percentile": 2.0, "max_percentile": 98.0}, per_sample=True)
    net = with_steps(densepred.from_torch(model, dims=2, in_channels=1), step)
    stack = np.random.default_rng(8).random((5, 41, 37), dtype=np.float32) * np.arange(1, 6)[:, None, None]
    got = densepred.predict_dense(net, stack, mode="exact", tile_shape=(2, 40, 36))
    for z, image in enumerate(stack):  # each slice predicted on its own, normalised by its own percentiles
        lo, hi = quantile(image, 2.0), quantile(image, 98.0)
        expected = whole(model, (image - lo) / (hi - lo + 1e-6), net.contract.factor, (40, 36))
        np.testing.assert_allclose(got[:, z], expected, rtol=0, atol=1e-5)
    joint = with_steps(densepred.from_torch(model, dims=2, in_channels=1),
                       Step("scale_range", {"min_percentile": 2.0, "max_percentile": 98.0}))
    assert not np.allclose(densepred.predict_dense(joint, stack, mode="exact", tile_shape=(2, 40, 36)), got)


def test_percentiles_of_a_large_image_come_from_evenly_spaced_slices(monkeypatch, caplog):
    monkeypatch.setattr(preprocess, "EXACT_VALUES", 10 * 30 * 30)
    volume = np.random.default_rng(6).random((40, 30, 30), dtype=np.float32)
    net = with_steps(densepred.from_torch(trained_looking(UNet(), seed=1), dims=3, in_channels=1),
                     Step("scale_range", {"min_percentile": 5.0, "max_percentile": 95.0}))
    from densepred.io import ChannelFirst

    with caplog.at_level(logging.WARNING, logger="densepred"):
        prepared = preprocess.resolve(net, ChannelFirst(volume, 1, 3))
    assert "every 4-th slice of 40 (9000 values)" in caplog.text
    stats = prepared.stats[0]
    assert stats["lower"].item() == pytest.approx(quantile(volume[::4], 5.0), rel=1e-6)
    assert stats["upper"].item() == pytest.approx(quantile(volume, 95.0), abs=0.02)


def test_per_channel_values_must_match_the_channels():
    net = with_steps(densepred.from_torch(two_channel_conv(), dims=3, in_channels=2),
                     Step("fixed_zero_mean_unit_variance", {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}))
    with pytest.raises(densepred.DensePredError, match="mean has 3 values for 2 input channel"):
        densepred.predict_dense(net, np.random.default_rng(0).random((2, 9, 9, 9), dtype=np.float32))


PROCESSING = """    preprocessing:
      - id: ensure_dtype
        kwargs: {dtype: float32}
      - id: zero_mean_unit_variance
        kwargs: {axes: [z, y, x]}
"""
POSTPROCESSING = """    postprocessing:
      - id: sigmoid
      - id: binarize
        kwargs: {threshold: 0.5}
"""


def described(rdf, processing=PROCESSING, postprocessing=POSTPROCESSING):
    """The zoo fixture's description with input preprocessing and output postprocessing."""
    text = RDF.replace("    test_tensor: {source: test_input.npy}\n",
                       "    test_tensor: {source: test_input.npy}\n" + processing)
    text = text.replace("    test_tensor: {source: test_output.npy}\n",
                        "    test_tensor: {source: test_output.npy}\n" + postprocessing)
    rdf.write_text(text)
    return rdf


def test_a_described_model_normalises_its_input_and_takes_its_sigmoid(zoo_model, tmp_path, caplog):
    pytest.importorskip("bioimageio.spec")
    rdf, model = zoo_model
    described(rdf)
    volume = np.random.default_rng(19).normal(90.0, 11.0, (21, 35, 30)).astype(np.float32)
    np.save(tmp_path / "in.npy", volume)
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                     str(tmp_path / "out.zarr"), "--mode", "exact", "--tile", "16", "--quiet"]) == 0
    assert "postprocessing binarize is not applied" in caplog.text
    x = volume.astype(np.float64)
    plain = densepred.from_torch(model.double(), dims=3, in_channels=1, output="sigmoid")
    expected = densepred.predict_dense(plain, (x - x.mean()) / (x.std() + 1e-6), mode="exact", tile_shape=16)
    np.testing.assert_allclose(stored(tmp_path / "out.zarr"), expected, rtol=0, atol=1e-5)
    zoo = densepred.from_bioimageio(rdf)
    assert zoo.output == "sigmoid"
    names = [s.name for s in zoo.preprocessing]  # bioimageio.spec may close with an ensure_dtype of its own
    assert names[:2] == ["ensure_dtype", "zero_mean_unit_variance"]
    assert set(names[2:]) <= {"ensure_dtype"}
    np.testing.assert_allclose(densepred.predict_dense(zoo, volume, mode="exact", tile_shape=16), expected,
                               rtol=0, atol=1e-5)


def test_a_zipped_package_predicts_like_its_unpacked_folder(zoo_model, tmp_path):
    pytest.importorskip("bioimageio.spec")
    rdf, _ = zoo_model
    described(rdf)
    package = tmp_path / "model.zip"
    with zipfile.ZipFile(package, "w") as archive:
        for path in rdf.parent.iterdir():
            archive.write(path, path.name)
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((13, 22, 19), dtype=np.float32))
    for source, output in ((rdf, "a.zarr"), (package, "b.zarr")):
        assert main(["predict", "--model-file", str(source), "--input", str(tmp_path / "in.npy"), "--output",
                     str(tmp_path / output), "--quiet"]) == 0
    np.testing.assert_array_equal(stored(tmp_path / "b.zarr"), stored(tmp_path / "a.zarr"))


@pytest.mark.parametrize(("processing", "message"), [
    ("    preprocessing:\n      - id: zero_mean_unit_variance\n        kwargs: {axes: [y, x]}\n",
     "measures per z"),
    ("    preprocessing:\n      - id: scale_linear\n        kwargs: {axis: z, gain: [1.0, 2.0]}\n",
     "values per channel only"),
])
def test_processing_tiles_cannot_reproduce_is_refused_in_one_line(zoo_model, tmp_path, capsys, processing, message):
    pytest.importorskip("bioimageio.spec")
    rdf, _ = zoo_model
    described(rdf, processing, "")
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((9, 9, 9), dtype=np.float32))
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "o.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]
    assert not (tmp_path / "o.zarr").exists()


def test_a_file_that_is_not_a_package_is_one_line(tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    (tmp_path / "model.zip").write_bytes(b"not a zip")
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((9, 9, 9), dtype=np.float32))
    assert main(["predict", "--model-file", str(tmp_path / "model.zip"), "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "o.zarr"), "--quiet"]) == 2
    assert "is not a readable zip file" in capsys.readouterr().err
