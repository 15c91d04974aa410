"""ELEKTRONN 1 import: configs in the style of ELEKTRONN's examples convert without running, a
.param written in ELEKTRONN's format predicts what an independent torch model of the ELEKTRONN
architecture gives, and hostile configs and pickles run nothing."""

from __future__ import annotations

import contextlib
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

import densepred
from densepred import DensePredError
from densepred.interfaces.cli import main
from densepred.networks.elektronn import import_elektronn

# The settings of ELEKTRONN 1's example configs, in its style: Python run with execfile, shapes
# in x, y, z order, defaults for what is left out.
NEURO_3D = """
save_path = "~/CNN_Training/3D/"
plot_on = True
param_save_h = 1.0
save_name = 'neuro_3d'
overwrite = True
save_path += save_name + '/'
param_file = None
activation_func = 'relu'
batch_size = 1
dropout_rates = []
n_dim = 3
desired_input = [127, 127, 7]
filters = [[4, 4, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [2, 2, 1]]
pool = [[2, 2, 1], [2, 2, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
nof_filters = [10, 25, 40, 50, 60]
pooling_mode = 'max'
MFP = []
target = 'nll'
mode = 'img-img'
n_lab = 2
data_path = '/data/'
d_files = [('raw_%i.h5' % i, 'raw') for i in range(3)]
l_files = [('barrier_int16_%i.h5' % i, 'lab') for i in range(3)]
del i
valid_cubes = [2,]
anisotropic_data = True
warp_on = 0.7
preview_kwargs = dict(export_class=1, max_z_pred=5)
n_steps = 10**12
max_runtime = 2 * 3600
history_freq = [500]
weight_decay = 0.0001
optimizer = 'SGD'
LR_decay = 0.993
SGD_params = dict(LR=0.005, momentum=0.90)
"""

MNIST_CNN = """
\"\"\"A small CNN classifying 2D patches (img-scalar).\"\"\"
save_path = "~/CNN_Training/2D/"
save_name = 'MNIST_example_warp'
save_path += save_name + '/'
activation_func = 'relu'
batch_size = 50
dropout_rates = None
n_dim = 2
desired_input = 26
filters = [3, 3]
pool = [2, 2]
nof_filters = [16, 32]
MLP_layers = [300, 300]
target = 'nll'
mode = 'img-scalar'
n_lab = None
data_class_name = 'MNISTData'
data_load_kwargs = dict(path=None, convert2image=True, warp_on=True, shift_augment=True)
n_steps = 100000
max_runtime = 30 * 60
SGD_params = dict(LR=0.02, momentum=0.9)
"""

MNIST_MLP = """
save_name = 'MNIST_mlp'
activation_func = 'tanh'
MLP_layers = [300, 300]
target = 'nll'
mode = 'vect-scalar'
n_lab = None
data_load_kwargs = dict(path=None, convert2image=False)
"""

TEMPLATE = """
save_path = "~/CNN_Training/3D/"
save_name = 'Debug'
save_path += save_name + '/'
activation_func = 'relu'
n_dim = 2
desired_input = 100
filters = []
pool = []
nof_filters = []
MFP = []
rnn_layer_kwargs = None
MLP_layers = []
target = 'nll'
mode = 'img-img'
n_lab = None
border_mode = "crop"
CG_params = dict(n_steps=4, alpha=0.35, beta=0.75, max_step=0.02, min_step=8e-5)
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(text: str, name: str) -> int:
    return 1 + next(i for i, line in enumerate(textwrap.dedent(text).splitlines()) if line.startswith(name))


def write_param(path: Path, layers: list[tuple[np.ndarray, np.ndarray]], poolings: list, perceptron_from: int) -> None:
    """ELEKTRONN's saveParameters: the shapes of each layer's first parameter, then W, b (conv)
    or b, W (perceptron) per layer, then the poolings; pickle protocol 2 records."""
    ordered = [(w, b) if i < perceptron_from else (b, w) for i, (w, b) in enumerate(layers)]
    with open(path, "wb") as f:
        pickle.dump([first.shape for first, _ in ordered], f, protocol=2)
        for first, second in ordered:
            pickle.dump(first, f, protocol=2)
            pickle.dump(second, f, protocol=2)
        pickle.dump(poolings, f, protocol=2)


def random_layers(shapes: list[tuple[int, ...]], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers = []
    for shape in shapes:
        fan_in = int(np.prod(shape)) // shape[0] if len(shape) > 2 else shape[0]
        w = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        n_out = shape[0] if len(shape) > 2 else shape[1]
        layers.append((w, (rng.standard_normal(n_out) * 0.1).astype(np.float32)))
    return layers


@pytest.mark.parametrize(("text", "sizes", "expected"), [
    (NEURO_3D, {}, {"dims": 3, "n_classes": 2, "layers": 5}),
    (MNIST_CNN, {"n_classes": 10}, {"dims": 2, "n_classes": 10, "layers": 2, "mlp": [300, 300]}),
    (MNIST_MLP, {"n_classes": 10, "in_channels": 784}, {"dims": 0, "n_classes": 10, "mlp": [300, 300]}),
    (TEMPLATE, {"n_classes": 2}, {"dims": 2, "n_classes": 2, "layers": 0}),
])
def test_elektronn_example_configs_convert_and_load(tmp_path, text, sizes, expected):
    config = write(tmp_path, "config.py", text)
    result = import_elektronn(config, None, tmp_path / "out", **sizes)
    cfg = densepred.load_config(result.config)
    network = cfg.network
    assert network.dims == expected["dims"]
    assert network.n_classes == expected["n_classes"]
    assert len(network.layers) == expected.get("layers", 0)
    assert list(network.mlp) == expected.get("mlp", [])
    assert result.weights is None


def test_neuro_3d_converts_axes_and_names_what_is_not_carried(tmp_path):
    result = import_elektronn(write(tmp_path, "neuro_3d_config.py", NEURO_3D), None, tmp_path / "out")
    cfg = densepred.load_config(result.config)
    assert cfg.name == "neuro_3d"
    assert cfg.network.layers[0].kernel == (1, 4, 4)  # x, y, z = 4, 4, 1
    assert cfg.network.layers[1].pool == (1, 2, 2)
    assert cfg.network.activation == "relu"
    assert cfg.prediction.tile_shape is not None
    assert cfg.prediction.tile_shape[0] == 7  # desired_input's z
    text = result.config.read_text()
    for name in ("warp_on", "anisotropic_data", "d_files", "valid_cubes"):
        assert any(name in w for w in result.warnings), name
        assert name in text  # also in the file's comments
    assert "lr = 0.005" in text
    assert "momentum = 0.9" in text
    d_files = next(w for w in result.warnings if "d_files" in w)
    assert f"line {line_of(NEURO_3D, 'd_files')}:" in d_files
    assert "comprehension" in d_files


def _elektronn_3d_forward(x_zxy: torch.Tensor, layers: list[tuple[np.ndarray, np.ndarray]],
                          pools: list[tuple[int, int, int]]) -> torch.Tensor:
    """ELEKTRONN's 3D net, independently of the importer: data (z, x, y), W (nf, fz, nin, fx, fy)
    used as (nf, nin, fz, fx, fy) (ELEKTRONN2's transpose), conv, max-pool, then bias and relu;
    a linear 1x1x1 output layer and a softmax over classes."""
    x = x_zxy[None, None]
    for i, (w, b) in enumerate(layers):
        x = F.conv3d(x, torch.from_numpy(w.transpose(0, 2, 1, 3, 4)).double())
        if i < len(pools) and any(p > 1 for p in pools[i]):
            x = F.max_pool3d(x, pools[i])
        x = x + torch.from_numpy(b).double()[None, :, None, None, None]
        if i < len(layers) - 1:
            x = torch.relu(x)
    return torch.softmax(x, dim=1)[0]


def test_a_converted_3d_net_predicts_what_the_elektronn_architecture_gives(tmp_path):
    config = write(tmp_path, "aniso.py", """
        save_name = 'aniso'
        n_dim = 3
        desired_input = [30, 30, 5]
        filters = [[4, 4, 1], [3, 3, 3], [2, 2, 1]]
        pool = [[2, 2, 1], [1, 1, 1], [1, 1, 1]]
        nof_filters = [5, 6, 7]
        MFP = [1, 0, 0]
        n_lab = 3
        """)
    # W as ELEKTRONN stores 3D filters: (nf, fz, nin, fx, fy); filters (x, y, z) = (4, 4, 1) etc.
    shapes = [(5, 1, 1, 4, 4), (6, 3, 5, 3, 3), (7, 1, 6, 2, 2), (3, 1, 7, 1, 1)]
    layers = random_layers(shapes, seed=3)
    param = tmp_path / "aniso-LAST.param"
    write_param(param, layers, [[2, 2, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]], perceptron_from=len(layers))
    result = import_elektronn(config, param, tmp_path / "out")
    net = densepred.create_prediction_net(result.config)
    fov = net.geometry.fov  # z, y, x
    volume_zxy = np.random.default_rng(4).random((fov[0] + 4, fov[2] + 9, fov[1] + 6)).astype(np.float32)
    got = densepred.predict_dense(net, volume_zxy.transpose(0, 2, 1), mode="mfp")  # densepred reads z, y, x
    got_zxy = got.transpose(0, 1, 3, 2)
    # the definition: ELEKTRONN's net on every field-of-view window (z, x, y) separately
    windows = np.lib.stride_tricks.sliding_window_view(volume_zxy, (fov[0], fov[2], fov[1]))
    expected = np.empty_like(got_zxy)
    for index in np.ndindex(windows.shape[:3]):
        window = torch.from_numpy(np.ascontiguousarray(windows[index])).double()
        expected[(slice(None), *index)] = _elektronn_3d_forward(window, layers, [(1, 2, 2)]).numpy()[:, 0, 0, 0]
    np.testing.assert_allclose(got_zxy, expected, atol=2e-6)


def test_a_converted_2d_cnn_with_an_mlp_head_classifies_as_elektronn(tmp_path):
    config = write(tmp_path, "mnist.py", MNIST_CNN)
    # conv W (nf, nin, fx, fy); perceptron W (n_in, n_out) on the flattened (ch, x, y) maps
    shapes = [(16, 1, 3, 3), (32, 16, 3, 3), (32 * 5 * 5, 300), (300, 300), (300, 10)]
    layers = random_layers(shapes, seed=5)
    param = tmp_path / "mnist-LAST.param"
    write_param(param, layers, [[2, 2], [2, 2]], perceptron_from=2)
    result = import_elektronn(config, param, tmp_path / "out")
    net = densepred.create_prediction_net(result.config)
    patches_xy = np.random.default_rng(6).random((4, 26, 26)).astype(np.float32)
    got = densepred.class_probabilities(net, patches_xy.transpose(0, 2, 1))
    x = torch.from_numpy(patches_xy).double()[:, None]
    for w, b in layers[:2]:
        x = torch.relu(F.max_pool2d(F.conv2d(x, torch.from_numpy(w).double()), 2) + torch.from_numpy(b).double()[
            None, :, None, None])
    x = x.reshape(len(x), -1)
    for i, (w, b) in enumerate(layers[2:]):
        x = x @ torch.from_numpy(w).double() + torch.from_numpy(b).double()
        x = torch.relu(x) if i < 2 else x
    np.testing.assert_allclose(got, torch.softmax(x, 1).numpy(), atol=2e-6)


def test_a_vect_scalar_mlp_takes_its_sizes_from_the_param(tmp_path):
    config = write(tmp_path, "mlp.py", MNIST_MLP)
    layers = random_layers([(20, 300), (300, 300), (300, 4)], seed=7)
    param = tmp_path / "mlp-LAST.param"
    write_param(param, layers, [], perceptron_from=0)
    result = import_elektronn(config, param, tmp_path / "out")
    cfg = densepred.load_config(result.config)
    assert (cfg.network.in_channels, cfg.network.n_classes) == (20, 4)
    net = densepred.create_prediction_net(result.config)
    features = np.random.default_rng(8).random((6, 20)).astype(np.float32)
    x = torch.from_numpy(features).double()
    for i, (w, b) in enumerate(layers):
        x = x @ torch.from_numpy(w).double() + torch.from_numpy(b).double()
        x = torch.tanh(x) if i < 2 else x
    np.testing.assert_allclose(densepred.class_probabilities(net, features), torch.softmax(x, 1).numpy(), atol=2e-6)


def test_every_weight_shape_is_checked_before_anything_is_written(tmp_path):
    config = write(tmp_path, "neuro_3d_config.py", NEURO_3D)
    shapes = [(10, 1, 1, 4, 4), (25, 1, 10, 3, 3), (40, 3, 25, 3, 3), (50, 3, 40, 3, 3), (60, 1, 50, 2, 2),
              (2, 1, 60, 1, 1)]
    wrong = [*shapes[:3], (50, 3, 40, 2, 2), *shapes[4:]]
    param = tmp_path / "wrong.param"
    write_param(param, random_layers(wrong), [], perceptron_from=6)
    with pytest.raises(DensePredError, match=r"layer 3 has W \[50, 3, 40, 2, 2\].*needs W \[50, 3, 40, 3, 3\]"):
        import_elektronn(config, param, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    write_param(param, random_layers(shapes[:2] + shapes[3:]), [], perceptron_from=6)
    with pytest.raises(DensePredError, match="holds 5 layers; the config's network has 6"):
        import_elektronn(config, param, tmp_path / "out")
    write_param(param, random_layers(shapes[:-1]), [], perceptron_from=6)
    with pytest.raises(DensePredError, match="n_lab = 2 but the weights have 60 outputs"):
        import_elektronn(config, param, tmp_path / "out")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_malicious_param_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"
    config = write(tmp_path, "mlp.py", MNIST_MLP)
    param = tmp_path / "evil.param"
    with open(param, "wb") as f:
        pickle.dump([(20, 30)], f, protocol=2)
        pickle.dump(_RunsCode(marker), f, protocol=2)
    refused = (r"refused .*evil.param: record 2 is not plain data \(it names posix.system, which a weights file "
               r"never needs\); nothing in it was run")
    with pytest.raises(DensePredError, match=refused):
        import_elektronn(config, param, tmp_path / "out", n_classes=4)
    assert not marker.exists()


def test_a_config_that_imports_and_calls_runs_nothing(tmp_path, capsys, caplog):
    marker = tmp_path / "MARKER"
    hostile = NEURO_3D + f"\nimport os\nos.system('touch {marker}')\n__import__('os').system('touch {marker}')\n"
    config = write(tmp_path, "hostile.py", hostile)
    assert main(["import-elektronn", str(config), "--out", str(tmp_path / "out")]) == 0
    assert not marker.exists()
    assert "os needs an import" in caplog.text
    assert "a call (os.system(...)): skipped, not run" in caplog.text
    needed = write(tmp_path, "needed.py", NEURO_3D.replace("nof_filters = [10, 25, 40, 50, 60]",
                                                           f"nof_filters = __import__('os').system('touch {marker}')"))
    assert main(["import-elektronn", str(needed), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"line {line_of(NEURO_3D, 'nof_filters')}: nof_filters needs a call (__import__('os').system(...))" in err
    assert not marker.exists()
    assert not (tmp_path / "out2").exists()


def test_what_densepred_cannot_represent_is_refused_in_one_line(tmp_path, capsys):
    for change, message in (("activation_func = 'relu'", "activation_func = 'maxout 2'"),
                            ("pooling_mode = 'max'", "pooling_mode = 'maxabs'"),
                            ("target = 'nll'", "target = 'malis'"),
                            ("activation_func = 'relu'", "activation_func = ['relu', 'tanh', 'relu', 'relu', 'relu', "
                                                         "'relu']")):
        config = write(tmp_path, "c.py", NEURO_3D.replace(change, message))
        assert main(["import-elektronn", str(config), "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0


def test_the_cli_converts_and_the_result_predicts(tmp_path, capsys):
    config = write(tmp_path, "neuro_3d_config.py", NEURO_3D)
    shapes = [(10, 1, 1, 4, 4), (25, 1, 10, 3, 3), (40, 3, 25, 3, 3), (50, 3, 40, 3, 3), (60, 1, 50, 2, 2),
              (2, 1, 60, 1, 1)]
    param = tmp_path / "neuro_3d-LAST.param"
    write_param(param, random_layers(shapes), [[2, 2, 1], [2, 2, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]], 6)
    assert main(["import-elektronn", str(config), str(param), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "neuro_3d-LAST.safetensors" in out
    assert "field of view [5, 31, 31]" in out
    np.save(tmp_path / "in.npy", np.random.default_rng(9).random((9, 40, 44), dtype=np.float32))
    assert main(["predict", str(tmp_path / "out" / "neuro_3d.toml"), "--input", str(tmp_path / "in.npy"),
                 "--output", str(tmp_path / "p.npy"), "--mirror", "--quiet"]) == 0
    assert np.load(tmp_path / "p.npy").shape == (2, 9, 40, 44)


NEURO_3D_SHAPES = [(10, 1, 1, 4, 4), (25, 1, 10, 3, 3), (40, 3, 25, 3, 3), (50, 3, 40, 3, 3), (60, 1, 50, 2, 2),
                   (2, 1, 60, 1, 1)]


@pytest.fixture(scope="module")
def param_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("param") / "neuro_3d-LAST.param"
    write_param(path, random_layers(NEURO_3D_SHAPES), [[2, 2, 1], [2, 2, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]], 6)
    return path.read_bytes()


@seed(20261209)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.none(), st.floats(0, 1)), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                                      max_size=4))
@example(None, [(281, 149)])  # found: a frame length past any size, pickle's OverflowError
@example(None, [(186, 68)])  # found: an encoding no codec names ('Datin1'), a LookupError
@example(None, [(27, 114)])  # found: an array shape far beyond the file, a MemoryError
def test_a_damaged_param_is_read_or_refused_in_one_error(tmp_path, param_bytes, cut, edits):
    """A .param cut short or with bytes overwritten (its record headers, the shapes) gives its
    arrays or one DensePredError; never another exception, nothing run."""
    from densepred.networks.elektronn_param import read_param_file

    data = bytearray(param_bytes[:None if cut is None else int(len(param_bytes) * cut)])
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    (tmp_path / "d.param").write_bytes(bytes(data))
    with contextlib.suppress(DensePredError):
        read_param_file(tmp_path / "d.param")


SETTINGS = [line.split("=")[0].strip() for line in textwrap.dedent(MNIST_CNN).splitlines()
            if "=" in line and "+=" not in line and not line.startswith(" ")]
LITERALS = ["'a'", "2.6", "-'a'", "+'a'", "[1, 'x']", "None", "(1,)", "{}", "True", "-1", "0", "1e400", "[[1]]",
            "[]", "'max'", "[2, 2]", "dict(a=1)"]


@seed(20261210)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(SETTINGS), st.sampled_from(LITERALS)), min_size=1, max_size=3))
@example([("save_name", "+'a'")])  # found: unary plus of a string, a TypeError in the parser
@example([("desired_input", "2.6")])  # found: a float shape, 'float' object is not iterable
@example([("n_lab", "'MNISTData'")])  # found: int('MNISTData'), a ValueError
def test_any_value_of_an_elektronn_setting_converts_or_is_one_error(tmp_path, replaced):
    """A config's settings given any literal (found by editing example configs character by
    character): it converts, or one ConfigError names the setting; never another exception."""
    lines = textwrap.dedent(MNIST_CNN).splitlines()
    for name, literal in replaced:
        lines = [f"{name} = {literal}" if line.split("=")[0].strip() == name and "+=" not in line else line
                 for line in lines]
    config = write(tmp_path, "config.py", "\n".join(lines))
    with contextlib.suppress(DensePredError):
        import_elektronn(config, None, tmp_path / "out", n_classes=10)
