"""`densepred predict --model`: a U-Net written elsewhere, from a file to a file, exact or blended,
resumable, equal to the in-memory prediction."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import save_file

import densepred
from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.io.run_record import done_line
from densepred.running.jobs import model_job as foreign_job
from tests.test_foreign import UNet, trained_looking

KWARGS = json.dumps({"dims": 3, "depth": 2, "width": 4})


@pytest.fixture
def model_files(tmp_path):
    model = trained_looking(UNet(), seed=7).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet.safetensors")
    torch.save(model.state_dict(), tmp_path / "unet.pt")
    volume = np.random.default_rng(12).random((37, 53, 46), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    return model, volume


def predict(tmp_path, output, *extra, weights="unet.safetensors"):
    return main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", KWARGS, "--weights",
                 str(tmp_path / weights), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / output),
                 "--quiet", *extra])


def _shape(text):
    values = tuple(int(v) for v in text.split(","))
    return values * 3 if len(values) == 1 else values


def stored(path):
    group = zarr.open_group(path, mode="r")
    return np.asarray(group["0"][:])


@pytest.mark.parametrize(("mode", "tol", "tile"), [("exact", 0.0, (40, 40, 40)), ("blend", 1e-6, (16, 24, 20)),
                                                   ("blend", 1e-6, (16, 32, 32))])
def test_a_file_prediction_equals_the_in_memory_one(model_files, tmp_path, mode, tol, tile):
    model, volume = model_files
    assert predict(tmp_path, "out.zarr", "--mode", mode, "--tile", ",".join(map(str, tile)), "--levels", "2") == 0
    net = densepred.from_torch(model, dims=3, in_channels=1)
    expected = densepred.predict_dense(net, volume, mode=mode, tile_shape=tile)
    np.testing.assert_allclose(stored(tmp_path / "out.zarr"), expected, rtol=0, atol=tol)
    attributes = zarr.open_group(tmp_path / "out.zarr", mode="r").attrs["densepred"]
    assert attributes["complete"] is True
    assert not (tmp_path / "out.zarr.densepred" / foreign_job.ROWS).exists()


def test_pt_weights_load_through_weights_only(model_files, tmp_path):
    assert predict(tmp_path, "a.zarr", "--mode", "exact", "--tile", "40") == 0
    assert predict(tmp_path, "b.zarr", "--mode", "exact", "--tile", "40", weights="unet.pt") == 0
    assert stored(tmp_path / "a.zarr").tobytes() == stored(tmp_path / "b.zarr").tobytes()


@pytest.mark.parametrize(("mode", "where", "target", "tile"), [("exact", "Sink", "write", "40"),
                                                              ("blend", None, "_blend_slab", "16,40,40")])
def test_a_crash_then_resume_is_byte_identical(model_files, tmp_path, monkeypatch, mode, where, target, tile):
    assert predict(tmp_path, "whole.zarr", "--mode", mode, "--tile", tile, "--overlap", "0.5") == 0
    owner = foreign_job if where is None else getattr(foreign_job, where)
    original, calls = getattr(owner, target), {"n": 0}

    def crash(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(5, "Input/output error")
        return original(*args)

    monkeypatch.setattr(owner, target, crash)
    with pytest.raises(DensePredError, match=r"Input/output error.*--resume"):
        densepred.predict_to_file(densepred.PredictJob(
            None, str(tmp_path / "in.npy"), str(tmp_path / "cut.zarr"), model="tests.test_foreign:UNet",
            model_kwargs=KWARGS, weights=str(tmp_path / "unet.safetensors"), mode=mode,
            tile=_shape(tile), progress=False))
    monkeypatch.setattr(owner, target, original)
    assert predict(tmp_path, "cut.zarr", "--mode", mode, "--tile", tile, "--overlap", "0.5", "--resume") == 0
    assert stored(tmp_path / "cut.zarr").tobytes() == stored(tmp_path / "whole.zarr").tobytes()


def test_a_resumed_exact_run_keeps_its_window_when_the_budget_holds_another(model_files, tmp_path, monkeypatch):
    from densepred.networks.memory_budget import MemoryBudget
    from densepred.running.planning import model_window

    model, _ = model_files
    volume = np.random.default_rng(13).random((61, 77, 69), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    assert predict(tmp_path, "warm.zarr", "--mode", "exact") == 0  # the process's own memory settles
    original, calls = foreign_job.Sink.write, {"n": 0}

    def crash(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        return original(*args)

    monkeypatch.setattr(foreign_job.Sink, "write", crash)
    # 32 MiB for the windows over whatever the process holds (its resident memory moves with
    # the heap that earlier runs kept): a window sized to a small budget
    small = MemoryBudget(2**30 + 32 * 2**20, 2**30, "cpu")
    budget = model_window.memory_budget
    monkeypatch.setattr(model_window, "memory_budget", lambda limit, device: small if limit else budget(limit, device))
    with pytest.raises(DensePredError, match=r"Input/output error.*--resume"):
        densepred.predict_to_file(densepred.PredictJob(
            None, str(tmp_path / "in.npy"), str(tmp_path / "cut.zarr"), model="tests.test_foreign:UNet",
            model_kwargs=KWARGS, weights=str(tmp_path / "unet.safetensors"), mode="exact", progress=False,
            memory_limit=small.limit))
    monkeypatch.setattr(foreign_job.Sink, "write", original)
    record = tmp_path / "cut.zarr.densepred" / "run.json"
    window = json.loads(record.read_text())["tiles"]["window"]
    assert predict(tmp_path, "cut.zarr", "--mode", "exact", "--resume") == 0  # the default budget: larger
    assert json.loads(record.read_text())["tiles"]["window"] == window
    expected = densepred.predict_dense(densepred.from_torch(model, dims=3, in_channels=1), volume, mode="exact")
    np.testing.assert_allclose(stored(tmp_path / "cut.zarr"), expected, rtol=0, atol=1e-6)


def test_an_instance_norm_model_is_blended_and_a_model_without_weights_predicts_with_warnings(tmp_path, capsys, caplog):
    model = trained_looking(UNet(norm="instance")).float()
    save_file(dict(model.state_dict()), tmp_path / "inorm.safetensors")
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((20, 33, 30), dtype=np.float32))
    kwargs = json.dumps({"norm": "instance"})
    args = ["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", kwargs, "--weights",
            str(tmp_path / "inorm.safetensors"), "--input", str(tmp_path / "in.npy"), "--quiet", "--tile", "16"]
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert main([*args, "--output", str(tmp_path / "o.zarr")]) == 0
    assert "InstanceNorm3d" in caplog.text
    assert "no --weights" not in caplog.text
    assert main([*args, "--output", str(tmp_path / "x.zarr"), "--mode", "exact"]) == 2
    assert "impossible" in capsys.readouterr().err
    caplog.clear()
    without = [a for a in args if a != "--weights" and not a.endswith(".safetensors")]
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert main([*without, "--output", str(tmp_path / "r.zarr")]) == 0  # a newcomer's slip: said, not silent
    assert "no --weights for --model tests.test_foreign:UNet: it predicts with the parameters its constructor" in (
        caplog.text)


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "tests.test_foreign:Nothing"], "has no class Nothing"),
    (["--model", "no_such_package.mod:Net"], "cannot import no_such_package.mod"),
    (["--model", "tests.test_foreign:UNet", "--model-kwargs", "{dims: 3}"], "not valid JSON"),
    (["--model", "tests.test_foreign:UNet", "--weights", "missing.safetensors"], "does not exist"),
    (["--model", "tests.test_foreign:UNet", "--mode", "mfp"], "--mode mfp is for densepred's own nets"),
    (["--model", "tests.test_foreign:UNet", "--model-file", "m.pt2"], "one of them"),
    (["--model-file", "missing.pt2"], "does not exist"),
    (["--model", "tests.test_foreign:UNet", "--model-kwargs", KWARGS, "--memory-limit", "1M", "--mode", "exact"],
     "is too small"),
])
def test_model_mistakes_are_one_line_exit_2(model_files, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--input", "in.npy", "--output", "o.zarr", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]
    assert not (tmp_path / "o.zarr").exists()


def test_a_model_that_needs_a_module_not_installed_says_which_in_one_line(tmp_path, capsys, monkeypatch):
    """As MONAI's UNETR without einops: the import in the constructor (or the model's file) fails."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((9, 11, 13), dtype=np.float32))
    (tmp_path / "lazy.py").write_text("import torch\n\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                                      "        super().__init__()\n        import densepred_absent_einops.layers\n")
    (tmp_path / "eager.py").write_text("import densepred_absent_einops\n")
    for model, message in (("lazy.py:Net", "--model lazy.py:Net: Net needs the Python module "
                                           "'densepred_absent_einops', which is not installed here; install it "
                                           "(pip install densepred_absent_einops, for most modules)"),
                           ("eager.py:Net", "it needs the Python module 'densepred_absent_einops', which is not "
                                            "installed here (pip install densepred_absent_einops")):
        assert main(["predict", "--model", model, "--input", "in.npy", "--output", "o.zarr", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert message in err[0]
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow  # 7 s: torch.export of the U-Net
def test_a_torch_export_program_predicts_like_its_module(model_files, tmp_path):
    model, volume = model_files
    sides = [torch.export.Dim(f"d{axis}", min=2, max=128) for axis in range(3)]
    program = torch.export.export(model, (torch.rand(1, 1, 40, 40, 40),),
                                  dynamic_shapes=({2: 4 * sides[0], 3: 4 * sides[1], 4: 4 * sides[2]},))
    torch.export.save(program, tmp_path / "unet.pt2")
    assert main(["predict", "--model-file", str(tmp_path / "unet.pt2"), "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "e.zarr"), "--mode", "exact", "--tile", "40", "--quiet"]) == 0
    net = densepred.from_torch(model, dims=3, in_channels=1)
    expected = densepred.predict_dense(net, volume, mode="exact", tile_shape=40)
    np.testing.assert_allclose(stored(tmp_path / "e.zarr"), expected, rtol=0, atol=1e-5)
    # exported for one size only: a fixed-shape model, blended with windows of exactly that size
    torch.export.save(torch.export.export(model, (torch.rand(1, 1, 24, 32, 32),)), tmp_path / "static.pt2")
    assert main(["predict", "--model-file", str(tmp_path / "static.pt2"), "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "s.zarr"), "--quiet"]) == 0
    fixed = densepred.from_torch(model, dims=3, in_channels=1, fixed=(24, 32, 32))
    np.testing.assert_allclose(stored(tmp_path / "s.zarr"), densepred.predict_dense(fixed, volume, mode="blend"),
                               rtol=0, atol=1e-5)


def test_a_2d_model_over_a_stack_predicts_file_to_file(tmp_path):
    model = trained_looking(UNet(dims=2), seed=9).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet2d.safetensors")
    stack = np.random.default_rng(16).random((6, 45, 38), dtype=np.float32)
    np.save(tmp_path / "in.npy", stack)
    assert main(["predict", "--model", "tests.test_foreign:UNet", "--model-kwargs", json.dumps({"dims": 2}),
                 "--dims", "2", "--weights", str(tmp_path / "unet2d.safetensors"), "--input",
                 str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.zarr"), "--mode", "exact", "--tile",
                 "40,36", "--quiet"]) == 0
    net = densepred.from_torch(model, dims=2, in_channels=1)
    expected = np.stack([densepred.predict_dense(net, image, mode="exact", tile_shape=(40, 36)) for image in stack],
                        axis=1)
    np.testing.assert_allclose(stored(tmp_path / "out.zarr"), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "blend"])
def test_strict_refuses_a_nan_input_and_names_the_voxel(model_files, tmp_path, capsys, caplog, mode):
    _, volume = model_files
    volume = volume.copy()
    volume[20, 30, 11] = np.nan
    np.save(tmp_path / "in.npy", volume)
    assert predict(tmp_path, "strict.zarr", "--mode", mode, "--tile", "40,40,40", "--strict") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no finite prediction" in err[0]
    assert not zarr.open_group(tmp_path / "strict.zarr", mode="r").attrs["densepred"].get("complete")
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert predict(tmp_path, "lenient.zarr", "--mode", mode, "--tile", "40,40,40") == 0
    assert any("pass --strict to refuse it" in r.getMessage() for r in caplog.records)


SOURCE = '''import torch
from torch import nn


class Tiny(nn.Module):
    """Same-padded, one 2x downsampling, eval batch norm: exactly tileable."""

    def __init__(self, width=3):
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(), nn.MaxPool3d(2))
        self.up = nn.ConvTranspose3d(width, width, 2, stride=2)
        self.head = nn.Conv3d(width + 1, 2, 3, padding=1)

    def forward(self, x):
        return self.head(torch.cat([x, self.up(self.down(x))], 1))
'''


def tiny_job(tmp_path, seed, shape, **fixed):
    """The Tiny model from its own file, trained-looking weights and a random input; returns
    ``job(output, **options)``, a PredictJob of them with ``fixed`` options."""
    (tmp_path / "tiny.py").write_text(SOURCE)
    from densepred.networks.loading import load_model

    model = trained_looking(load_model(f"{tmp_path / 'tiny.py'}:Tiny"), seed=seed).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "tiny.safetensors")
    np.save(tmp_path / "in.npy", np.random.default_rng(seed + 14).random(shape, dtype=np.float32))

    def job(output, **options):
        return densepred.PredictJob(None, str(tmp_path / "in.npy"), str(tmp_path / output),
                                    model=f"{tmp_path / 'tiny.py'}:Tiny", weights=str(tmp_path / "tiny.safetensors"),
                                    progress=False, **fixed, **options)
    return job


@pytest.mark.slow  # 16 s; make test runs this model's blocks on a cluster in test_cluster
def test_exact_blocks_on_a_local_cluster_equal_the_one_process_run_then_resume(tmp_path):
    job = tiny_job(tmp_path, 3, (29, 47, 41), mode="exact", tile=(16, 20, 20), levels=2)

    densepred.predict_to_file(job("one.zarr"))
    result = densepred.predict_to_file(job("two.zarr", workers=2, threads_per_worker=1, tiles_per_block=1))
    assert result.tiles > 4  # several blocks
    np.testing.assert_allclose(stored(tmp_path / "two.zarr"), stored(tmp_path / "one.zarr"), rtol=0, atol=1e-6)
    assert zarr.open_group(tmp_path / "two.zarr", mode="r").attrs["densepred"]["complete"] is True

    record = tmp_path / "two.zarr.densepred"  # interrupted after its first blocks: resume in one process
    state = json.loads((record / "run.json").read_text())
    state["complete"] = False
    (record / "run.json").write_text(json.dumps(state))
    (record / "done.log").write_text(done_line(0) + done_line(1))
    resumed = densepred.predict_to_file(job("two.zarr", resume=True))
    assert resumed.skipped == 2
    np.testing.assert_allclose(stored(tmp_path / "two.zarr"), stored(tmp_path / "one.zarr"), rtol=0, atol=1e-6)


@pytest.mark.slow  # 15 s; exact blocks on a cluster: the test above and test_cluster
def test_blend_on_a_local_cluster_equals_the_one_process_blend_and_resumes_anywhere(tmp_path):
    job = tiny_job(tmp_path, 5, (27, 45, 39), mode="blend", tile=(12, 16, 16), overlap=0.5, levels=1)

    densepred.predict_to_file(job("one.zarr"))
    expected = stored(tmp_path / "one.zarr")
    result = densepred.predict_to_file(job("two.zarr", workers=2, threads_per_worker=1, tiles_per_block=1))
    assert result.tiles > 8  # several blocks of whole shards
    np.testing.assert_allclose(stored(tmp_path / "two.zarr"), expected, rtol=0, atol=1e-6)

    # interrupted after two shards: every other voxel wiped, resumed in one process, then on the
    # cluster with another block size; nothing may stay unwritten
    record, level = tmp_path / "two.zarr.densepred", zarr.open_array(tmp_path / "two.zarr" / "0", mode="r+")
    for resume in ({}, {"workers": 2, "threads_per_worker": 1, "tiles_per_block": 2}):
        state = json.loads((record / "run.json").read_text())
        state["complete"] = False
        (record / "run.json").write_text(json.dumps(state))
        (record / "done.log").write_text(done_line(0) + done_line(1))
        shard = level.shards or level.chunks
        kept = level[:, :shard[1], :shard[2], :2 * shard[3]]
        level[:] = np.nan
        level[:, :shard[1], :shard[2], :2 * shard[3]] = kept
        resumed = densepred.predict_to_file(job("two.zarr", resume=True, **resume))
        assert resumed.skipped == 2
        np.testing.assert_allclose(stored(tmp_path / "two.zarr"), expected, rtol=0, atol=1e-6)


RDF = """format_version: 0.5.4
type: model
name: tiny exact net
description: a same-padded 3D CNN with one downsampling, for densepred's tests
authors: [{name: densepred tests}]
cite: [{text: densepred, url: "https://github.com/"}]
license: MIT
documentation: README.md
inputs:
  - id: raw
    axes:
      - type: batch
      - {type: channel, channel_names: [raw]}
      - {type: space, id: z, size: {min: 8, step: 2}}
      - {type: space, id: y, size: {min: 8, step: 2}}
      - {type: space, id: x, size: {min: 8, step: 2}}
    test_tensor: {source: test_input.npy}
outputs:
  - id: logits
    axes:
      - type: batch
      - {type: channel, channel_names: [a, b]}
      - {type: space, id: z, size: {tensor_id: raw, axis_id: z}}
      - {type: space, id: y, size: {tensor_id: raw, axis_id: y}}
      - {type: space, id: x, size: {tensor_id: raw, axis_id: x}}
    test_tensor: {source: test_output.npy}
weights:
  pytorch_state_dict:
    source: weights.pt
    pytorch_version: "2.13"
    architecture: {source: tiny.py, callable: Tiny, kwargs: {width: 3}}
"""


def zoo_package(folder):
    """An unpacked bioimage.io model package in ``folder``: rdf.yaml, the architecture's file,
    its weights; returns the rdf.yaml and the model."""
    from densepred.networks.loading import load_model

    folder.mkdir()
    (folder / "tiny.py").write_text(SOURCE)
    model = trained_looking(load_model(f"{folder / 'tiny.py'}:Tiny"), seed=5).float()
    torch.save(model.state_dict(), folder / "weights.pt")
    x = np.random.default_rng(3).random((1, 1, 8, 8, 8), dtype=np.float32)
    np.save(folder / "test_input.npy", x)
    with torch.no_grad():
        np.save(folder / "test_output.npy", model(torch.from_numpy(x)).numpy())
    (folder / "README.md").write_text("# tiny\n")
    (folder / "rdf.yaml").write_text(RDF)
    return folder / "rdf.yaml", model


@pytest.fixture
def zoo_model(tmp_path):
    return zoo_package(tmp_path / "zoo")


def test_a_bioimageio_model_predicts_file_to_file_like_its_module(zoo_model, tmp_path):
    pytest.importorskip("bioimageio.spec")
    rdf, model = zoo_model
    volume = np.random.default_rng(18).random((21, 35, 30), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "out.zarr"), "--mode", "exact", "--tile", "16", "--quiet"]) == 0
    net = densepred.from_torch(model, dims=3, in_channels=1, output="identity")  # no postprocessing: logits
    expected = densepred.predict_dense(net, volume, mode="exact", tile_shape=16)
    np.testing.assert_allclose(stored(tmp_path / "out.zarr"), expected, rtol=0, atol=1e-6)
    zoo = densepred.from_bioimageio(rdf)
    assert (zoo.dims, zoo.in_channels) == (3, 1)
    np.testing.assert_allclose(densepred.predict_dense(zoo, volume, mode="exact", tile_shape=16), expected,
                               rtol=0, atol=1e-6)


def test_a_bioimageio_package_missing_its_weights_is_one_line(zoo_model, tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    rdf, _ = zoo_model
    (rdf.parent / "weights.pt").unlink()
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((9, 9, 9), dtype=np.float32))
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "o.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "weights.pt" in err[0]
    assert not (tmp_path / "o.zarr").exists()
