"""bioimage.io packages as they come: TorchScript and ONNX weights, format 0.4 descriptions that do
not convert, fixed input sizes, several outputs; ``densepred test-model`` runs each package's
own test inputs whole and tiled and compares with its test outputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import densepred
from densepred.interfaces.cli import main
from tests.test_foreign_files import stored

pytest.importorskip("bioimageio.spec")

SOURCE = '''import torch
from torch import nn


class Flat(nn.Module):
    """2D, same-padded, one 2x downsampling: exactly tileable; ``heads`` outputs."""

    def __init__(self, heads=1):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.heads = nn.ModuleList(nn.Conv2d(5, 2 + i, 3, padding=1) for i in range(heads))

    def forward(self, x):
        y = torch.cat([x, self.up(self.down(x))], 1)
        outs = tuple(head(y) for head in self.heads)
        return outs[0] if len(outs) == 1 else outs
'''

HEADER = """format_version: 0.5.4
type: model
name: flat test net
description: a 2D same-padded CNN for densepred's tests
authors: [{name: densepred tests}]
cite: [{text: densepred, url: "https://github.com/"}]
license: MIT
documentation: README.md
"""
INPUT = """inputs:
  - id: raw
    axes:
      - type: batch
      - {type: channel, channel_names: [raw]}
      - {type: space, id: y, size: SIZE}
      - {type: space, id: x, size: SIZE}
    test_tensor: {source: test_input.npy}
"""
OUTPUT = """  - id: NAME
    axes:
      - type: batch
      - {type: channel, channel_names: [CHANNELS]}
      - {type: space, id: y, size: {tensor_id: raw, axis_id: y}}
      - {type: space, id: x, size: {tensor_id: raw, axis_id: x}}
    test_tensor: {source: NAME.npy}
POST"""
SIGMOID = "    postprocessing:\n      - id: sigmoid\n      - id: binarize\n        kwargs: {threshold: 0.5}\n"


def flat_model(folder, heads=1, seed=3):
    """The Flat model from ``folder``/flat.py (written there), with seeded random weights."""
    from densepred.networks.loading import load_model

    folder.mkdir(exist_ok=True)
    (folder / "flat.py").write_text(SOURCE)
    torch.manual_seed(seed)
    return load_model(f"{folder / 'flat.py'}:Flat", {"heads": heads}).eval()


def package(folder, weights, *, heads=1, size="{min: 16, step: 8}", post="", shape=(1, 1, 40, 48), seed=3):
    """A 2D package in ``folder`` with the ``weights`` entries given (each entry's files are
    written), test tensors from the model; returns its rdf.yaml."""
    model = flat_model(folder, heads, seed)
    (folder / "README.md").write_text("# flat\n")
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    np.save(folder / "test_input.npy", x)
    with torch.no_grad():
        outs = model(torch.from_numpy(x))
    outs = outs if isinstance(outs, tuple) else (outs,)
    names = [f"out{i}" for i in range(heads)]
    for name, y in zip(names, outs, strict=True):
        np.save(folder / f"{name}.npy", (torch.sigmoid(y) > 0.5 if post else y).numpy())
    outputs = "".join(OUTPUT.replace("NAME", name).replace("CHANNELS", ", ".join(f"c{k}" for k in range(2 + i)))
                      .replace("POST", post) for i, name in enumerate(names))
    entries = []
    if any(w.startswith("state_dict") for w in weights):
        torch.save(model.state_dict(), folder / "weights.pt")
        source = "https://example.org/weights.pt" if "state_dict_url" in weights else "weights.pt"
        entries.append(f"  pytorch_state_dict:\n    source: {source}\n    pytorch_version: '2.13'\n"
                       f"    architecture: {{source: flat.py, callable: Flat, kwargs: {{heads: {heads}}}}}\n")
    if "torchscript" in weights:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, torch.rand(1, 1, 16, 16)).save(str(folder / "model.torchscript"))
        entries.append("  torchscript:\n    source: model.torchscript\n    pytorch_version: '2.13'\n")
    if "onnx" in weights:
        export_onnx(model, folder / "model.onnx", heads)
        entries.append("  onnx:\n    source: model.onnx\n    opset_version: 17\n")
    text = HEADER + INPUT.replace("SIZE", size) + "outputs:\n" + outputs + "weights:\n" + "".join(entries)
    (folder / "rdf.yaml").write_text(text)
    return folder / "rdf.yaml"


def export_onnx(model, path, heads=1, fixed=None):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    names = [f"out{i}" for i in range(heads)]
    dynamic = None if fixed else {"x": {0: "b", 2: "h", 3: "w"}, **{n: {0: "b", 2: "h", 3: "w"} for n in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.rand(1, 1, *(fixed or (16, 16))), str(path), input_names=["x"],
                          output_names=names, dynamic_axes=dynamic, dynamo=False, opset_version=17)


def run_test_model(rdf, capsys, *options):
    code = main(["test-model", str(rdf), *options])
    return code, capsys.readouterr()


def test_torchscript_weights_run_where_the_state_dict_is_a_download(tmp_path, capsys):
    rdf = package(tmp_path / "p", ("state_dict_url", "torchscript"))
    code, out = run_test_model(rdf, capsys)
    assert code == 0, out.out + out.err
    lines = out.out.splitlines()
    assert any(line.startswith("pass  torchscript, output out0, whole") for line in lines)
    assert any(line.startswith("pass  torchscript, output out0, tiled") for line in lines)
    assert any(line.startswith("skip  pytorch_state_dict") and "download" in line for line in lines)
    image = np.random.default_rng(5).random((75, 61), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "o.zarr"), "--tile", "24,32", "--quiet"]) == 0  # a 2D window: y,x
    net = densepred.from_torch(flat_model(rdf.parent), dims=2, in_channels=1, output="identity")
    expected = densepred.predict_dense(net, image, mode="exact", tile_shape=(24, 32))
    np.testing.assert_allclose(stored(tmp_path / "o.zarr"), expected, rtol=0, atol=1e-5)


def test_onnx_weights_pass_the_zoos_test_whole_and_tiled(tmp_path, capsys):
    rdf = package(tmp_path / "p", ("onnx",))
    code, out = run_test_model(rdf, capsys)
    assert code == 0, out.out + out.err
    assert "pass  onnx, output out0, whole" in out.out
    assert "pass  onnx, output out0, tiled" in out.out


def test_every_output_of_a_two_output_model_is_tested_and_one_is_chosen_to_predict(tmp_path, capsys):
    rdf = package(tmp_path / "p", ("state_dict", "torchscript"), heads=2, post=SIGMOID)
    code, out = run_test_model(rdf, capsys)
    assert code == 0, out.out + out.err
    for form in ("pytorch_state_dict", "torchscript"):
        for name in ("out0", "out1"):
            assert f"pass  {form}, output {name}, tiled" in out.out
    image = np.random.default_rng(6).random((33, 50), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "o.zarr"), "--output-tensor", "out1", "--weights-format", "torchscript",
                 "--quiet"]) == 0
    net = densepred.from_torch(flat_model(rdf.parent, 2), dims=2, in_channels=1, output="sigmoid", output_tensor=1)
    assert stored(tmp_path / "o.zarr").shape[0] == 3
    np.testing.assert_allclose(stored(tmp_path / "o.zarr"), densepred.predict_dense(net, image), rtol=0, atol=1e-5)
    assert main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "x.zarr"), "--output-tensor", "out7", "--quiet"]) == 2
    assert "has no output 'out7'; its outputs are out0, out1" in capsys.readouterr().err


def test_a_wrong_test_output_fails_with_exit_1(tmp_path, capsys):
    rdf = package(tmp_path / "p", ("state_dict",))
    expected = np.load(rdf.parent / "out0.npy")
    expected[0, 1, 7, 9] += 1e-3
    np.save(rdf.parent / "out0.npy", expected)
    code, out = run_test_model(rdf, capsys)
    assert code == 1
    assert "FAIL  pytorch_state_dict, output out0, whole" in out.out
    assert "1 of 3840 values beyond 0.00015" in out.out


FIXED_V04 = """format_version: 0.4.10
type: model
name: fixed 2D net
description: a fixed-size 0.4 model whose output has a halo
authors: [{name: densepred tests}]
cite: [{text: densepred, url: "https://github.com/"}]
license: MIT
documentation: README.md
timestamp: 2024-01-01T00:00:00
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    data_range: [-.inf, .inf]
    shape: [1, 1, 32, 32]
outputs:
  - name: out0
    axes: bcyx
    data_type: float32
    data_range: [-.inf, .inf]
    shape: [1, 2, 32, 32]
    halo: [0, 0, 4, 4]
test_inputs: [test_input.npy]
test_outputs: [out0.npy]
weights:
  onnx:
    source: model.onnx
    opset_version: 17
"""


@pytest.mark.slow  # 12 s
def test_a_fixed_size_0_4_package_that_does_not_convert_runs_as_it_is(tmp_path, capsys):
    folder = tmp_path / "p"
    package(folder, (), shape=(1, 1, 32, 32))
    export_onnx(flat_model(folder), folder / "model.onnx", fixed=(32, 32))
    (folder / "rdf.yaml").write_text(FIXED_V04)
    code, out = run_test_model(folder / "rdf.yaml", capsys)
    assert code == 0, out.out + out.err
    assert "pass  onnx, output out0, whole (window 32x32, blend)" in out.out
    assert "skip  onnx, output out0, tiled: not tiled: its input size is fixed at [32, 32]" in out.out
    image = np.random.default_rng(7).random((20, 27), dtype=np.float32)  # smaller than the fixed size: padded
    np.save(tmp_path / "in.npy", image)
    assert main(["predict", "--model-file", str(folder / "rdf.yaml"), "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "o.zarr"), "--quiet"]) == 0
    padded = np.zeros((32, 32), np.float32)
    padded[:20, :27] = image
    with torch.no_grad():
        expected = flat_model(folder)(torch.from_numpy(padded)[None, None])[0, :, :20, :27].numpy()
    np.testing.assert_allclose(stored(tmp_path / "o.zarr"), expected, rtol=0, atol=1e-5)
    given = ["--factor", "2", "--context", "8"]  # exact tiling with windows of the fixed size, when told how
    large = np.random.default_rng(8).random((70, 45), dtype=np.float32)
    np.save(tmp_path / "large.npy", large)
    assert main(["predict", "--model-file", str(folder / "rdf.yaml"), "--input", str(tmp_path / "large.npy"),
                 "--output", str(tmp_path / "e.zarr"), "--mode", "exact", *given, "--quiet"]) == 0
    with torch.no_grad():
        whole = flat_model(folder)(torch.from_numpy(np.pad(large, ((0, 0), (0, 1))))[None, None])[0, :, :, :45].numpy()
    np.testing.assert_allclose(stored(tmp_path / "e.zarr"), whole, rtol=0, atol=1e-5)


def test_an_invalid_description_names_every_reason(tmp_path, capsys):
    folder = tmp_path / "p"
    package(folder, ("state_dict",))
    text = (folder / "rdf.yaml").read_text().replace("license: MIT", "license: not-a-license")
    (folder / "rdf.yaml").write_text(text.replace("step: 8", "step: -8"))
    code, out = run_test_model(folder / "rdf.yaml", capsys)
    assert code == 2
    err = out.err.strip().splitlines()
    assert len(err) == 1
    assert "not a valid bioimage.io model description" in err[0]
    assert "license: Input should be" in err[0]
    assert "step: Input should be greater than" in err[0]


def test_a_package_whose_model_does_not_give_the_scale_it_describes_is_refused_in_one_line(tmp_path, capsys):
    rdf = package(tmp_path / "p", ("state_dict",))
    text = rdf.read_text().replace("{type: space, id: y, size: {tensor_id: raw, axis_id: y}}",
                                   "{type: space, id: y, scale: 0.5, size: {tensor_id: raw, axis_id: y}}")
    rdf.write_text(text.replace("{type: space, id: x, size: {tensor_id: raw, axis_id: x}}",
                                "{type: space, id: x, scale: 0.5, size: {tensor_id: raw, axis_id: x}}"))
    code, out = run_test_model(rdf, capsys)
    assert code == 2
    assert len(out.err.strip().splitlines()) == 1
    assert "whose output is 2 times the input" in out.err
    assert "check the scale 2 given" in out.err


def test_the_readme_test_model_example_prints_what_it_shows(tmp_path):
    import zipfile

    from tests.test_readme import README, run_as_written, shell_blocks

    block = next(b for b in shell_blocks(README.read_text()) if "densepred test-model" in b)
    command, *shown = block.strip().splitlines()
    rdf = package(tmp_path / "p", ("state_dict_url", "torchscript"))
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        for path in rdf.parent.iterdir():
            archive.write(path, path.name)
    printed = run_as_written(command, tmp_path).splitlines()
    for line in shown:
        assert any(p.startswith(line.removeprefix("# ").removesuffix("...")) for p in printed), line


PICKY = '''from torch import nn


class Picky(nn.Module):
    """Accepts only sides of 288 + 32k: larger than the sizes the probe tries."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        if min(x.shape[2:]) < 288 or any((s - 288) % 32 for s in x.shape[2:]):
            raise ValueError("sizes of 288 + 32k only")
        return self.conv(x)
'''


def test_sizes_the_probe_cannot_find_are_named_and_can_be_given(tmp_path, capsys):
    from densepred.networks.loading import load_model

    (tmp_path / "picky.py").write_text(PICKY)
    model = load_model(f"{tmp_path / 'picky.py'}:Picky")
    torch.save(model.state_dict(), tmp_path / "picky.pt")
    image = np.random.default_rng(9).random((300, 290), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    base = ["predict", "--model", f"{tmp_path / 'picky.py'}:Picky", "--weights", str(tmp_path / "picky.pt"), "--dims",
            "2", "--input", str(tmp_path / "in.npy"), "--activation", "identity", "--quiet"]
    assert main([*base, "--output", str(tmp_path / "a.zarr")]) == 2
    err = capsys.readouterr().err
    assert "could not be determined" in err
    assert "--factor and --smallest" in err
    given = ["--factor", "32", "--smallest", "288", "--context", "1", "--mode", "exact"]
    assert main([*base, "--output", str(tmp_path / "b.zarr"), *given]) == 0
    padded = np.zeros((320, 320), np.float32)
    padded[:300, :290] = image
    with torch.no_grad():
        expected = model(torch.from_numpy(padded)[None, None])[0, :, :300, :290].numpy()
    np.testing.assert_allclose(stored(tmp_path / "b.zarr"), expected, rtol=0, atol=1e-5)
