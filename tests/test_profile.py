"""The profiler: valid shapes only, measured rows, the memory stop, and --write round trips."""

from __future__ import annotations

import csv
import itertools
import math
import tomllib

import pytest
import torch

import densepred
from densepred.config import network_geometry, set_prediction_settings
from densepred.interfaces.cli import main
from densepred.networks.weights import save_weights
from densepred.running.profiling import CSV_COLUMNS, profile, tile_walk

TINY_2D = """name = "tiny2d"
save_dir = "run"

[network]
dims = 2
in_channels = 1
n_classes = 2
activation = "relu"
layers = [
  { filters = 6, kernel = 3, pool = 2 },  # a comment that --write must keep
  { filters = 6, kernel = [3, 2] },
]
patch_size = [20, 40]
"""

MLP_2D = """name = "mlp2d"
[network]
dims = 2
in_channels = 1
n_classes = 3
layers = [ { filters = 4, kernel = 3, pool = 2 }, { filters = 4, kernel = 2 } ]
mlp = [12]
patch_size = [12, 12]
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny2d.toml"
    path.write_text(TINY_2D)
    return path


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row, strict=True)) for row in reader]


def shape(text):
    return tuple(int(v) for v in text.split("x"))


def test_walk_grows_with_the_aspect_and_every_input_is_mfp_valid():
    cfg = densepred.config_from_dict({"network": {
        "dims": 3, "in_channels": 1, "n_classes": 2,
        "layers": [{"filters": 4, "kernel": [1, 3, 3], "pool": [1, 2, 2]}, {"filters": 4, "kernel": 3, "pool": 3}]}})
    geometry = network_geometry(cfg.network)
    shapes = tile_walk(geometry, (0.25, 1, 1), ("mfp",), 200 * 2**20)
    assert len(shapes) > 5
    for before, after in itertools.pairwise(shapes):
        assert math.prod(after) >= 1.35 * math.prod(before)
    for output in shapes:
        assert all(o % t == 0 for o, t in zip(output, geometry.stride, strict=True))
        assert geometry.is_valid(geometry.input_shape_for(output), "mfp")
    assert shapes[-1][0] < shapes[-1][1] == shapes[-1][2]  # flat like the aspect


def test_profile_writes_a_csv_of_valid_measured_shapes_and_a_plot(tiny_config, tmp_path):
    import matplotlib

    previous = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        result = profile(tiny_config, device="cpu", max_seconds=3, out=tmp_path / "out", progress=False)
        assert matplotlib.get_backend() == "pdf"  # the plot leaves the caller's backend alone
    finally:
        matplotlib.use(previous)
    header, rows = read_rows(result.csv_path)
    assert tuple(header) == CSV_COLUMNS
    assert result.png_path.stat().st_size > 1000
    assert {r["mode"] for r in rows} == {"mfp", "dilated"}
    assert len(rows) >= 4
    geometry = network_geometry(densepred.load_config(tiny_config).network)
    for r in rows:
        assert r["status"] == "ok"
        input_shape, output = shape(r["input_shape"]), shape(r["output_shape"])
        assert geometry.dense_output_shape(input_shape) == output
        assert geometry.is_valid(input_shape, r["mode"])
        assert int(r["output_voxels"]) == math.prod(output)
        seconds, rate = float(r["seconds"]), float(r["voxels_per_s"])
        assert rate == pytest.approx(math.prod(output) / seconds, rel=1e-4)
        assert float(r["useful_gflops"]) == pytest.approx(rate * geometry.flops_per_voxel / 1e9, rel=1e-4)
        assert float(r["fraction_of_peak"]) == pytest.approx(
            float(r["useful_gflops"]) * 1e9 / result.matmul_flops, abs=1e-4)
        assert int(r["peak_bytes"]) > result.baseline // 2  # measured, not estimated: includes torch
    best = result.best
    assert best.voxels_per_s == pytest.approx(max(float(r["voxels_per_s"]) for r in rows), rel=1e-5)
    assert f"tile_shape = {list(best.input_shape)}" in result.recommendation()


@pytest.mark.slow  # 8 s: two profiles
def test_memory_limit_stops_growth_before_the_measured_peak_passes_it(tiny_config, tmp_path):
    nothing = profile(tiny_config, device="cpu", memory_limit=1, out=None, progress=False)
    assert nothing.rows == []
    assert nothing.best is None
    assert "exceed the memory limit" in nothing.stops[0]
    limit = nothing.baseline + 24 * 2**20  # the worker's own memory plus 24 MiB for tiles
    bounded = profile(tiny_config, device="cpu", max_seconds=90, memory_limit=limit, out=None, progress=False)
    assert bounded.rows, "the smallest shapes fit in the limit"
    # the stop rests on a prediction; at a few MiB the allocator's granularity is the noise
    # (measured overshoots reach 12 MiB on a 2-core VM, in about one run of three)
    assert all(r.peak_bytes <= limit + 16 * 2**20 for r in bounded.rows)
    assert any("memory limit" in s or "over the limit" in s for s in bounded.stops), bounded.stops
    assert all(r.estimated_bytes < 24 * 2**20 for r in bounded.rows)


@pytest.mark.slow
def test_mlp_head_nets_profile_like_any_other(tmp_path):
    path = tmp_path / "mlp2d.toml"
    path.write_text(MLP_2D)
    result = profile(path, device="cpu", modes="mfp", max_seconds=4, out=None, progress=False)
    geometry = network_geometry(densepred.load_config(path).network)
    assert result.rows
    assert all(geometry.is_valid(r.input_shape, "mfp") for r in result.rows)


def test_write_round_trips_and_becomes_the_prediction_default(tiny_config, tmp_path, capsys):
    code = main(["profile", str(tiny_config), "--write", "--max-seconds", "1", "--quiet", "--modes", "mfp",
                 "--out", str(tmp_path / "p")])
    assert code == 0
    printed = capsys.readouterr().out
    cfg = densepred.load_config(tiny_config)
    assert cfg.prediction.mode == "mfp"
    assert cfg.prediction.tile_shape is not None
    assert f"tile_shape = {list(cfg.prediction.tile_shape)}" in printed
    assert "# a comment that --write must keep" in tiny_config.read_text()
    torch.manual_seed(0)
    save_weights(densepred.build_net(cfg), tmp_path / "run" / "tiny2d-LAST.safetensors")
    net = densepred.create_prediction_net(tiny_config)
    assert net.tile_shape == cfg.prediction.tile_shape
    assert net.mode == "mfp"


def test_set_prediction_settings_replaces_or_appends_the_table():
    text = 'name = "a"\n[prediction]\n# keep\nmode = "dilated"\nbatch_size = 2\n[training]\nsteps = 3\n'
    updated = set_prediction_settings(text, [9, 9], "mfp")
    assert "# keep" in updated
    assert tomllib.loads(updated) == {
        "name": "a", "prediction": {"mode": "mfp", "batch_size": 2, "tile_shape": [9, 9]}, "training": {"steps": 3}}
    appended = set_prediction_settings('name = "a"\n', [9, 9], "mfp")
    assert tomllib.loads(appended) == {"name": "a", "prediction": {"tile_shape": [9, 9], "mode": "mfp"}}


@pytest.mark.parametrize("spelling", [
    '[prediction] # the fastest tile goes here\nmode = "dilated"\n',
    '[ prediction ]\nmode = "dilated"\n',
    'prediction.mode = "dilated"\n',
    '[prediction]\ntile_shape = [\n  41,\n  41,\n]\nmode = "dilated"\n',
])
def test_set_prediction_settings_accepts_every_valid_spelling(spelling):
    """Valid TOML that a line-based editor broke: a comment after the header, spaces in it,
    dotted keys, a multi-line array."""
    text = 'name = "a"\n# top comment\n' + spelling
    updated = set_prediction_settings(text, [9, 9], "mfp")
    assert tomllib.loads(updated)["prediction"] == {"tile_shape": [9, 9], "mode": "mfp"}
    assert "# top comment" in updated


@pytest.mark.parametrize(("args", "message"), [
    (["--memory-limit", "lots"], "--memory-limit 'lots' is invalid; expected a size like 8GiB"),
    (["--modes", "mfp,fast"], "modes ['mfp', 'fast'] are invalid; choose from mfp, dilated, naive"),
    (["--aspect", "1,2,3"], "--aspect '1,2,3' is invalid; expected 2 positive numbers"),
    (["--device", "tpu"], "device 'tpu' is invalid"),
    (["--max-seconds", "nan"], "--max-seconds must be a positive number of seconds"),
    (["--out", "FILE/profile"], "FILE is a file; name a folder (--out, out=)"),  # told before minutes of measuring
    (["--memory-limit", "50MiB"], "no tile shape could be measured: even the smallest tile is estimated to exceed "
                                  "the memory limit of 0.05 GiB"),
])
def test_bad_profile_options_are_one_line_with_exit_code_2(tiny_config, capsys, args, message):
    (tiny_config.parent / "FILE").write_text("")
    args = [a.replace("FILE", str(tiny_config.parent / "FILE")) for a in args]
    message = message.replace("FILE", str(tiny_config.parent / "FILE"))
    assert main(["profile", str(tiny_config), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow  # 7 s
def test_a_stream_is_profiled_over_cross_sections_with_a_fixed_length(tiny_config, tmp_path):
    from densepred.running.profiling.walk import stream_length

    result = profile(tiny_config, device="cpu", modes=("dilated", "stream"), max_seconds=5, out=None,
                     progress=False, repeats=1)
    geometry = network_geometry(densepred.load_config(tiny_config).network)
    streams = [r for r in result.rows if r.mode == "stream" and r.status == "ok"]
    cubes = [r for r in result.rows if r.mode == "dilated" and r.status == "ok"]
    assert len(streams) >= 3, (result.stops, [(r.mode, r.input_shape, r.status) for r in result.rows])
    assert {r.output_shape[0] for r in streams} == {stream_length(geometry)}
    common = min(len(streams), len(cubes))  # the same walk: the cubes' cross-sections, in order
    assert [r.output_shape[1:] for r in streams[:common]] == [r.output_shape[1:] for r in cubes[:common]]
    assert all(geometry.is_valid(r.input_shape, "stream") for r in streams)
    assert all(r.output_shape == geometry.dense_output_shape(r.input_shape) for r in streams)
