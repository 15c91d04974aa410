"""``densepred info --model``: a model's tiling contract, its smallest exact window (the
smallest an exact prediction accepts) and its memory, and a window size checked against them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import densepred
from densepred.interfaces.cli import main
from tests.test_reliability_files import one_error_line

MODEL = ["--model", "tests.test_foreign:UNet", "--model-kwargs", json.dumps({"dims": 3, "depth": 2}),
         "--device", "cpu"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def info(capsys, *extra):
    assert main(["info", *MODEL, *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_smallest_exact_window_is_the_smallest_an_exact_prediction_accepts(tmp_path, capsys):
    lines = info(capsys)
    assert lines[0] == "model 'tests.test_foreign:UNet': 3D, 1 channel(s) in, 3 out"
    assert "exact tiling possible" in lines[1]
    window = lines[2].split("window ")[1].split(" ")[0]
    assert window == "36x36x36"
    assert "bytes per input voxel on cpu" in lines[3]
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((37, 41, 39), dtype=np.float32))
    predict = ["predict", *MODEL, "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy"),
               "--mode", "exact", "--quiet", "--overwrite"]
    assert main([*predict, "--tile", window.replace("x", ",")]) == 0
    one_error_line(capsys, main([*predict, "--tile", "32,36,36"]), "too small for exact tiling")


@pytest.mark.parametrize(("window", "said"), [
    ("40,41,60", "window 40x41x60: not on the contract's sizes (smallest input + k * factor per axis); nearest: "
                 "40x40x60 or 40x44x60"),
    ("20,20,20", "window 20x20x20: accepted, but too small for exact tiling (at least 36x36x36)"),
    ("36,40,100", "window 36x40x100: accepted, exact tiling possible"),
])
def test_a_window_is_checked_against_the_contract(capsys, window, said):
    assert info(capsys, "--input-shape", window)[-1] == said


def test_a_model_that_cannot_tile_exactly_says_why_and_what_it_blends(capsys):
    assert main(["info", "--model", "tests.test_foreign:UNet", "--model-kwargs",
                 json.dumps({"dims": 3, "depth": 2, "norm": "instance"}), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "not exactly tileable: down.0.1 (InstanceNorm3d)" in lines[1]
    assert lines[2] == "blended         predict blends windows of 64x64x64 (--tile sets another)"


@pytest.mark.parametrize(("args", "message"), [
    ([*MODEL, "--input-shape", "40,40"], "window [40, 40] is invalid for this 3D model; expected 3 sizes"),
    (["net.toml", *MODEL], "give a config or a model"),
    (["--input-shape", "4,4,4"], "densepred info needs the network's config file, or a model"),
    (["examples/m36.toml", "--device", "cpu"], "--device is for a model's info"),
    (["--model", "tests.test_foreign:Nothing"], "has no class Nothing"),
])
def test_info_mistakes_are_one_line_exit_2(capsys, args, message):
    one_error_line(capsys, main(["info", *args]), message)


class ResidualDown(torch.nn.Module):
    """Two stride-2 levels, each a strided convolution beside a strided shortcut (as MONAI's
    residual units): the hooks count both strides, a factor of 16, for sizes 4 apart."""

    def __init__(self):
        super().__init__()
        self.main = torch.nn.ModuleList([torch.nn.Conv3d(1 if i == 0 else 4, 4, 3, 2, 1) for i in range(2)])
        self.skip = torch.nn.ModuleList([torch.nn.Conv3d(1 if i == 0 else 4, 4, 1, 2) for i in range(2)])
        self.up = torch.nn.ConvTranspose3d(4, 2, 4, 4)

    def forward(self, x):
        for conv, shortcut in zip(self.main, self.skip, strict=True):
            x = torch.relu(conv(x)) + shortcut(x)
        return self.up(x)


def test_strides_counted_in_series_leave_the_factor_the_sizes_show_and_it_tiles_exactly(tmp_path, capsys):
    """Found by a sweep of MONAI's architectures: ``UNet(num_res_units=2)`` was probed at factor
    16 for strides of 4, so its exact windows were on a 16-grid (84 per side at least, not 52)."""
    from densepred.networks.contract_sizes import sizes
    from tests.test_foreign import trained_looking, whole

    model = ResidualDown().eval()
    assert sizes(model, 3, 1).factor == (16, 16, 16)  # what the hooks count
    lines = info(capsys, "--model", "tests.test_model_info:ResidualDown", "--model-kwargs", "{}")
    assert "factor [4, 4, 4]" in lines[1]
    assert "exact tiling possible" in lines[1]
    assert lines[2].startswith("smallest exact  window 16x16x16")  # 4 + 16k before: 20 at least
    model = trained_looking(model, seed=3)
    net = densepred.from_torch(model, dims=3, in_channels=1, output="identity")
    assert net.contract.factor == (4, 4, 4)
    volume = np.random.default_rng(6).random((29, 38, 33), dtype=np.float32)
    tiled = densepred.predict_dense(net, volume, mode="exact", tile_shape=(16, 20, 24))  # several per axis
    np.testing.assert_allclose(tiled, whole(model, volume, (4, 4, 4), (16, 20, 24), lambda t: t), rtol=0,
                               atol=1e-6)
