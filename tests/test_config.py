"""Config files: everything valid parses, every mistake is a ConfigError that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

import densepred
from densepred import ConfigError, DensePredError, load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_examples_load_and_build(path):
    cfg = load_config(path)
    net = densepred.build_net(cfg)
    assert net.geometry.fov == tuple(net.geometry.fov)


def test_per_axis_values_and_defaults(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text("""
name = "aniso"
save_dir = "runs"
[network]
dims = 3
in_channels = 2
n_classes = 4
layers = [{ filters = 8, kernel = [1, 5, 5], pool = [1, 2, 2] }, { filters = 8, kernel = 3, pool = 3 }]
[prediction]
tile_shape = [20, 100, 100]
mode = "mfp"
""")
    cfg = load_config(path)
    assert cfg.name == "aniso"
    assert cfg.save_dir == (tmp_path / "runs").resolve()
    assert cfg.network.layers[0].kernel == (1, 5, 5)
    assert cfg.network.layers[1].pool == (3, 3, 3)
    assert cfg.network.activation == "relu"
    assert cfg.network.output_kernel == (1, 1, 1)
    assert cfg.prediction.tile_shape == (20, 100, 100)
    assert cfg.prediction.mode == "mfp"


def net_with(**changes):
    network = {"dims": 2, "in_channels": 1, "n_classes": 2, "layers": [{"filters": 4, "kernel": 3, "pool": 2}]}
    network.update(changes)
    return {"network": network}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"netwrk": {}}, "unknown key 'netwrk' in top level (did you mean 'network'?)"),
        ({}, "missing [network] section"),
        (net_with(dims=4), "network.dims = 4 is invalid; expected 2, 3 or 0"),
        (net_with(n_classes=1), "at least 2 classes"),
        (net_with(in_channels=0), "network.in_channels = 0 is invalid; expected a positive integer"),
        (net_with(activation="rleu"), "network.activation = 'rleu' is unknown (did you mean 'relu'?)"),
        (net_with(layers=[{"filters": 4, "kernel": [3, 3, 3]}]), "network.layers[0].kernel = [3, 3, 3] is invalid"),
        (net_with(layers=[{"filters": 4, "kernal": 3}]),
         "unknown key 'kernal' in network.layers[0] (did you mean 'kernel'?)"),
        (net_with(layers=[{"kernel": 3}]), "network.layers[0] is missing 'filters'"),
        (net_with(layers=[{"filters": 4, "kernel": 0}]), "expected an integer >= 1"),
        (net_with(dropout=1.5), "network.dropout = 1.5 is invalid; expected a rate in [0, 1)"),
        (net_with(batchnorm="yes"), "expected true or false"),
        (net_with(mlp=[10]), "network.patch_size is required when mlp is non-empty"),
        (net_with(mlp=[10], patch_size=11), "network.patch_size = [11, 11] is not a valid input"),
        (net_with(mlp=[10], patch_size=12, output_kernel=3), "output_kernel = [3, 3] is invalid with an mlp head"),
        (net_with(dims=0, in_channels=5), "network.layers must be empty when dims = 0"),
        ({**net_with(), "prediction": {"mode": "mpf"}}, "prediction.mode = 'mpf' is invalid (did you mean 'mfp'?)"),
        ({**net_with(), "prediction": {"tile_shape": [1, 2, 3]}}, "prediction.tile_shape = [1, 2, 3] is invalid"),
        ({**net_with(), "name": "a/b"}, "name = 'a/b' is invalid"),
    ],
)
def test_mistakes_are_config_errors_that_say_what_is_valid(data, message):
    with pytest.raises(ConfigError) as error:
        densepred.config_from_dict(data)
    assert message in str(error.value)
    assert isinstance(error.value, DensePredError)
    assert isinstance(error.value, ValueError)


def test_patch_size_error_names_the_nearest_valid_sizes():
    with pytest.raises(ConfigError, match=r"nearest valid: \[10, 10\] or \[12, 12\]"):
        densepred.config_from_dict(net_with(mlp=[10], patch_size=11))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[network\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
