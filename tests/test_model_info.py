"""``densepred info --model``: a model's tiling contract, its smallest exact window (the
smallest an exact prediction accepts) and its memory, and a window size checked against them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((45, 50, 47), dtype=np.float32))
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
    residual units): the probe counts both strides, a factor of 16 for sizes 4 apart."""

    def __init__(self):
        super().__init__()
        self.main = torch.nn.ModuleList([torch.nn.Conv3d(1 if i == 0 else 4, 4, 3, 2, 1) for i in range(2)])
        self.skip = torch.nn.ModuleList([torch.nn.Conv3d(1 if i == 0 else 4, 4, 1, 2) for i in range(2)])
        self.up = torch.nn.ConvTranspose3d(4, 2, 4, 4)

    def forward(self, x):
        for conv, shortcut in zip(self.main, self.skip, strict=True):
            x = torch.relu(conv(x)) + shortcut(x)
        return self.up(x)


def test_a_factor_counted_twice_is_named_with_the_finer_one_that_tiles_exactly(capsys):
    probed = info(capsys, "--model", "tests.test_model_info:ResidualDown", "--model-kwargs", "{}")
    assert "factor [16, 16, 16]" in probed[1]
    assert probed[3].startswith("finer factor?   the model accepts sizes 4 apart, finer than its factor 16")
    given = info(capsys, "--model", "tests.test_model_info:ResidualDown", "--model-kwargs", "{}", "--factor", "4")
    assert "factor [4, 4, 4]" in given[1]
    assert "exact tiling possible" in given[1]
    assert not any(line.startswith("finer factor?") for line in given)
    assert not any(line.startswith("finer factor?") for line in info(capsys))  # the U-Net's factor is its own
