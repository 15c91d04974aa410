"""Property-based fuzzing (hypothesis, seeded): any config, `densepred predict` argument list or
bioimage.io description either works or fails with one DensePredError line (exit 2 from the CLI)
- never another exception, never an output left looking finished."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import densepred
from densepred.interfaces.cli import main
from tests.conftest import make_config

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(-2, 80), st.just(float("nan")),
                    st.sampled_from(["relu", "tanh", "mfp", "x", "", "1,2", "auto"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
LAYER = st.dictionaries(st.sampled_from(["filters", "kernel", "pool", "dilation", "strides"]), VALUES, max_size=4)
NETWORK = st.fixed_dictionaries({}, optional={
    "dims": VALUES, "in_channels": VALUES, "n_classes": VALUES, "activation": VALUES, "batchnorm": VALUES,
    "dropout": VALUES, "mlp": VALUES, "layers": st.lists(st.one_of(LAYER, SCALARS), max_size=3),
    "unknown_key": VALUES})
DOCUMENT = st.fixed_dictionaries({"network": st.one_of(NETWORK, SCALARS)}, optional={
    "name": VALUES, "prediction": st.dictionaries(st.sampled_from(["tile_shape", "mode", "batch_size"]), VALUES,
                                                  max_size=3),
    "training": st.dictionaries(st.sampled_from(["steps", "lr", "patch_size", "data"]), VALUES, max_size=3)})


@seed(20261204)
@settings(max_examples=300, deadline=None)
@given(DOCUMENT)
def test_any_config_document_is_valid_or_one_config_error(document):
    try:
        cfg = densepred.config_from_dict(document)
    except densepred.DensePredError:
        return  # the CLI prints any DensePredError on one line
    if cfg.network.dims:  # a valid image net must build and know its geometry
        try:
            net = densepred.build_net(cfg)
        except densepred.DensePredError:
            return  # e.g. too large for memory: refused before allocating
        assert all(f >= 1 for f in net.geometry.fov)


OPTIONS = [
    ("--tile", st.sampled_from(["6,19,17", "0,0,0", "5", "a,b", "6,19", "-1,4,4", "64,64,64", "1e9"])),
    ("--mode", st.sampled_from(["mfp", "dilated", "naive", "stream", "auto", "banana"])),
    ("--mirror", None),
    ("--dtype", st.sampled_from(["float32", "float16", "uint8", "int64"])),
    ("--argmax", None),
    ("--classes", st.sampled_from(["0", "0,2", "5", "-1", "x"])),
    ("--roi", st.sampled_from(["0:4,0:12,0:10", "5:4,0:1,0:1", "0:99,0:99,0:99", "zz"])),
    ("--batch-size", st.sampled_from(["1", "2", "0", "-3"])),
    ("--levels", st.sampled_from(["1", "2", "0"])),
    ("--chunks", st.sampled_from(["4,8,8", "0", "2"])),
    ("--voxel-size", st.sampled_from(["30,4,4", "0,1,1", "1", "nan,1,1"])),
    ("--unit", st.sampled_from(["nanometer", "nm", "parsec", "bogus"])),
    ("--memory-limit", st.sampled_from(["1G", "10", "500MB", "-1", "lots"])),
    ("--strict", None),
]


@st.composite
def argument_lists(draw, options=OPTIONS):
    """Up to five of ``options`` (name, values or None for a flag) with drawn values, and an output."""
    chosen = draw(st.lists(st.sampled_from(range(len(options))), unique=True, max_size=5))
    args = []
    for index in chosen:
        name, values = options[index]
        args += [name] if values is None else [name, draw(values)]
    return args, draw(st.sampled_from(["out.zarr", "out.h5:p", "out.npy", "out.tif", "out.mrc"]))


INPUTS = ["in.npy", "sections", "sections/z1*.tif", "in.mrc", "in.ims@t=0"]  # the same volume in each form


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import mrcfile
    import tifffile

    from tests.test_imaris_inputs import write_imaris

    folder = tmp_path_factory.mktemp("fuzz")
    config = make_config(folder)
    volume = np.random.default_rng(2).random((12, 31, 29), dtype=np.float32)
    np.save(folder / "in.npy", volume)
    (folder / "sections").mkdir()
    for z, section in enumerate(volume):
        tifffile.imwrite(folder / "sections" / f"z{z}.tif", section, compression="zlib" if z % 2 else None)
    with mrcfile.new(folder / "in.mrc") as mrc:
        mrc.set_data(volume)
    write_imaris(folder / "in.ims", volume[None, None])
    return folder, config


@seed(20261205)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argument_lists(), st.sampled_from(INPUTS))
def test_any_predict_arguments_work_or_fail_in_one_line(files, capsys, drawn, source):
    """Over each input form: a NumPy file, a folder of TIFF sections (and a pattern in it), an
    MRC file, an Imaris file's time point."""
    folder, config = files
    args, output = drawn
    work = folder / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    target = work / output.split(":")[0]
    try:
        code = main(["predict", str(config), "--input", str(folder / source), "--output", f"{work}/{output}",
                     "--quiet", "--device", "cpu", *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2 and err.startswith("densepred: error:"):
        assert len(err.strip().splitlines()) == 1, err
        record = target.with_name(target.name + ".densepred") / "run.json"
        if record.exists():  # anything left behind must not look finished
            assert json.loads(record.read_text())["complete"] is False
    if code == 0:
        assert target.exists()


# -- bioimage.io descriptions ---------------------------------------------------------------------

RDF_EDITS = [  # (a line of the fixture's rdf.yaml, replacements hypothesis picks from)
    ("format_version: 0.5.4", ["format_version: 0.4.10", "format_version: 9", "format_version: [1]", ""]),
    ("      - {type: space, id: z, size: {min: 8, step: 2}}",
     ["      - {type: space, id: z, size: 8}", "      - {type: space, id: z, size: {min: -1, step: 0}}",
      "      - {type: time, id: t, size: 8}", "      - {type: space, id: y, size: {min: 8, step: 2}}", ""]),
    ("      - {type: channel, channel_names: [raw]}",
     ["      - {type: channel, channel_names: [a, b]}", "      - {type: channel, channel_names: []}", ""]),
    ("      - {type: channel, channel_names: [a, b]}", ["      - {type: channel, channel_names: 7}", ""]),
    ("    source: weights.pt", ["    source: missing.pt", "    source: ../weights.pt", "    source: /dev/null",
                                "    source: https://example.org/w.pt", "    source: tiny.py", "    source: 3"]),
    ("    architecture: {source: tiny.py, callable: Tiny, kwargs: {width: 3}}",
     ["    architecture: {source: tiny.py, callable: Nope, kwargs: {width: 3}}",
      "    architecture: {source: tiny.py, callable: Tiny, kwargs: {width: -3}}",
      "    architecture: {source: tiny.py, callable: Tiny, kwargs: {depth: 3}}",
      "    architecture: {import_from: os.path, callable: join, kwargs: {}}",
      "    architecture: {import_from: torch.nn, callable: Identity, kwargs: {}}",
      "    architecture: {source: nothere.py, callable: Tiny}", "    architecture: 5"]),
    ("    test_tensor: {source: test_input.npy}",
     ["    test_tensor: {source: test_input.npy}\n    preprocessing:\n      - id: scale_range\n"
      "        kwargs: {axes: [z, y, x], min_percentile: 1, max_percentile: 99}",
      "    test_tensor: {source: test_input.npy}\n    preprocessing:\n      - id: no_such_step",
      "    test_tensor: {source: test_input.npy}\n    preprocessing:\n      - id: clip\n"
      "        kwargs: {min: 1, max: 0}",
      "    test_tensor: {source: test_input.npy}\n    preprocessing:\n      - id: zero_mean_unit_variance\n"
      "        kwargs: {axes: [x]}"]),
    ("    test_tensor: {source: test_output.npy}",
     ["    test_tensor: {source: test_output.npy}\n    postprocessing:\n      - id: softmax\n        kwargs: {axis: z}",
      "    test_tensor: {source: test_output.npy}\n    postprocessing:\n      - id: sigmoid\n      - id: binarize\n"
      "        kwargs: {threshold: 0.5}"]),
]


@st.composite
def descriptions(draw):
    from tests.test_foreign_files import RDF

    text = RDF
    for original, replacements in RDF_EDITS:
        if draw(st.booleans()):
            text = text.replace(original, draw(st.sampled_from(replacements)), 1)
    return text


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    pytest.importorskip("bioimageio.spec")
    from tests.test_foreign_files import zoo_package

    rdf, _ = zoo_package(tmp_path_factory.mktemp("zoofuzz") / "zoo")
    return rdf


@seed(20261206)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descriptions())
def test_any_bioimageio_description_is_read_or_refused_in_one_error(zoo, text):
    zoo.write_text(text)
    try:
        net = densepred.from_bioimageio(zoo)
    except densepred.DensePredError as exc:
        message = str(exc).strip()
        assert "\n" not in message, message
        assert not message.endswith(":"), message  # the reason is never lost after the colon
        return
    assert net.dims in (2, 3)


# -- `densepred predict --model` argument lists ------------------------------------------------------

TINY_MODEL = ["--model", "tests.test_foreign:UNet", "--model-kwargs",
              '{"dims": 3, "depth": 1, "width": 2, "classes": 2}']


def works_or_fails_in_one_line(capsys, argv):
    """``densepred argv`` exits 0, or 2 with one line on stderr (argparse's usage errors too)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


MODEL_OPTIONS = [
    ("--mode", st.sampled_from(["exact", "blend", "auto", "mfp"])),
    ("--tile", st.sampled_from(["16,16,16", "14", "12,20,20", "0", "a", "15,15,15", "16,16"])),
    ("--overlap", st.sampled_from(["0.5", "0", "1", "-0.1", "nan"])),
    ("--tta", st.sampled_from(["flips", "1,2", "3", "banana", "1,1"])),
    ("--activation", st.sampled_from(["softmax", "sigmoid", "identity"])),
    ("--dims", st.sampled_from(["2", "3"])),
    ("--in-channels", st.sampled_from(["1", "2", "0"])),
    ("--dtype", st.sampled_from(["float32", "float16", "uint8"])),
    ("--classes", st.sampled_from(["0", "0,1", "5"])),
    ("--argmax", None),
    ("--levels", st.sampled_from(["1", "2", "0"])),
    ("--chunks", st.sampled_from(["8", "8,8,8", "0", "8,8"])),
    ("--memory-limit", st.sampled_from(["1G", "10", "50MB"])),
    ("--output-tensor", st.sampled_from(["0", "1", "out"])),
    ("--factor", st.sampled_from(["2", "3", "0"])),
    ("--smallest", st.sampled_from(["4", "8,8,8", "0"])),
    ("--context", st.sampled_from(["5", "2:3,2:3,2:3", "-1"])),
    ("--scale", st.sampled_from(["1", "0.5", "0", "4"])),
    ("--precision", st.sampled_from(["float32", "bfloat16", "float16"])),
    ("--strict", None),
]


@pytest.mark.slow  # about 2-4 minutes: make test-slow
@seed(20261205)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argument_lists(MODEL_OPTIONS))
def test_any_model_arguments_work_or_fail_in_one_line(tmp_path_factory, capsys, drawn):
    """Found three defects when it was first run: a wrong --scale or an --output-tensor the model
    does not have made the size probe run for minutes to hours, a local cluster that did not
    start was a traceback (docs/RELIABILITY.md)."""
    from safetensors.torch import save_file

    from tests.test_foreign import UNet, trained_looking

    folder = tmp_path_factory.mktemp("model")
    model = trained_looking(UNet(dims=3, depth=1, width=2, classes=2), seed=1).float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "w.safetensors")
    np.save(folder / "in.npy", np.random.default_rng(3).random((13, 30, 27), dtype=np.float32))
    args, output = drawn
    works_or_fails_in_one_line(capsys, ["predict", *TINY_MODEL, "--weights", str(folder / "w.safetensors"),
                                        "--input", str(folder / "in.npy"), "--output", f"{folder}/{output}",
                                        "--quiet", *args])


# what names a model's shape and tiling contract, good and bad values (profile and info)
CONTRACT_OPTIONS = [
    ("--dims", st.sampled_from(["2", "3"])),
    ("--in-channels", st.sampled_from(["1", "2", "0"])),
    ("--factor", st.sampled_from(["2", "3", "0"])),
    ("--smallest", st.sampled_from(["4", "8,8,8", "0"])),
    ("--context", st.sampled_from(["5", "2:3,2:3,2:3", "-1"])),
    ("--scale", st.sampled_from(["1", "0.5", "0"])),
    ("--output-tensor", st.sampled_from(["0", "1"])),
]

PROFILE_OPTIONS = [
    ("--shape", st.sampled_from(["13,30,27", "30,27", "0,5,5", "a", "13,30,27,4", "400,400,400"])),
    ("--memory-limit", st.sampled_from(["1G", "10", "50MB"])),
    ("--max-seconds", st.sampled_from(["2", "0", "-1"])),
    ("--repeats", st.sampled_from(["1", "0"])),
    ("--precision", st.sampled_from(["float32", "bfloat16", "float16", "tf32"])),
    ("--activation", st.sampled_from(["softmax", "sigmoid", "identity"])),
    *CONTRACT_OPTIONS,
    ("--modes", st.sampled_from(["mfp", "exact"])),
    ("--write", None),
    ("--device", st.sampled_from(["cpu", "cuda:3", "mps"])),
]


@pytest.mark.slow  # about 1-2 minutes: make test-slow
@seed(20261206)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argument_lists(PROFILE_OPTIONS))
def test_any_model_profile_arguments_work_or_fail_in_one_line(tmp_path_factory, capsys, drawn):
    folder = tmp_path_factory.mktemp("profile")
    np.save(folder / "in.npy", np.random.default_rng(3).random((13, 30, 27), dtype=np.float32))
    args, _ = drawn
    where = [] if "--shape" in args else ["--input", str(folder / "in.npy")]
    works_or_fails_in_one_line(capsys, ["profile", *TINY_MODEL, "--quiet", "--max-seconds", "5", "--no-peaks", *where,
                                        *args])


PLAN_OPTIONS = [
    ("--tile", st.sampled_from(["36,40,48", "14", "0", "a", "16,16"])),
    ("--mode", st.sampled_from(["exact", "blend", "auto", "mfp"])),
    ("--overlap", st.sampled_from(["0.5", "1", "nan"])),
    ("--tta", st.sampled_from(["flips", "1,2", "banana"])),
    ("--workers", st.sampled_from(["1", "64", "0", "-2"])),
    ("--block", st.sampled_from(["2", "1,2,2", "0", "x"])),
    ("--input-dtype", st.sampled_from(["uint16", "float64", "banana"])),
    ("--dtype", st.sampled_from(["uint8", "float16"])),
    ("--channels", st.sampled_from(["1", "0", "7"])),
    ("--measure", None),
    ("--profile", st.sampled_from(["/nonexistent.csv", "README.md"])),
    ("--memory-limit", st.sampled_from(["1G", "10", "50MB"])),
    ("--precision", st.sampled_from(["float32", "bfloat16", "tf32"])),
    ("--mirror", None),
    ("--dims", st.sampled_from(["2", "3"])),
    ("--scale", st.sampled_from(["1", "0.5"])),
]


@pytest.mark.slow  # about 1 minute: make test-slow
@seed(20261207)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argument_lists(PLAN_OPTIONS))
def test_any_model_plan_arguments_work_or_fail_in_one_line(capsys, drawn):
    args, _ = drawn
    works_or_fails_in_one_line(capsys, ["plan", *TINY_MODEL, "--shape", "13,300,270", *args])


INFO_OPTIONS = [
    ("--input-shape", st.sampled_from(["36,40,48", "14", "0,0,0", "a", "16,16", "-4,8,8"])),
    *CONTRACT_OPTIONS,
    ("--activation", st.sampled_from(["softmax", "sigmoid"])),
    ("--device", st.sampled_from(["cpu", "cuda:3"])),
]


@pytest.mark.slow  # about 30 s: make test-slow
@seed(20261208)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argument_lists(INFO_OPTIONS))
def test_any_model_info_arguments_work_or_fail_in_one_line(capsys, drawn):
    works_or_fails_in_one_line(capsys, ["info", *TINY_MODEL, *drawn[0]])
