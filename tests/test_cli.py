"""The command line: tables for good configs, one line and exit code 2 for mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from densepred.interfaces.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_info_prints_the_layer_table_and_geometry(capsys):
    assert main(["info", str(EXAMPLES / "m36.toml"), "--input-shape", "108"]) == 0
    out = capsys.readouterr().out
    assert "conv2   3 x 3 x 3  2 x 2 x 2  80    4 x 4 x 4  9 x 9 x 9" in out
    assert "field of view   85 x 85 x 85" in out
    assert "stride          8 x 8 x 8" in out
    assert "dense output 24 x 24 x 24" in out
    assert "valid for mfp" in out
    assert "nearest valid: 101 x 101 x 101 or 109 x 109 x 109" in out


def test_bad_config_is_one_line_on_stderr_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\ndims = 3\nin_channels = 1\nn_classes = 2\nactivation = "rleu"\n')
    result = subprocess.run([sys.executable, "-m", "densepred", "info", str(bad)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "did you mean 'relu'" in lines[0]


def test_argument_mistakes_are_one_line_pointing_to_help(capsys):
    import pytest

    for args, message in ((["predict", "net.toml", "--output", "o.zarr"], "required: --input"),
                          (["predikt"], "invalid choice: 'predikt'"),
                          (["predict", "net.toml", "--input", "i.npy", "--output", "o.zarr", "--mode", "fast"],
                           "argument --mode: invalid choice: 'fast'")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err  # no usage block before it
        assert message in err
        assert err.endswith("--help lists the options)")


def test_an_abbreviated_option_is_refused_not_taken_for_a_longer_one(capsys):
    # plan has no --output: argparse took it for --output-tensor, without a word
    assert_one_line_exit_2(["plan", str(EXAMPLES / "n4.toml"), "--shape", "50,50", "--output", "x"], capsys,
                           "unrecognized arguments: --output x")


def test_a_models_option_given_to_a_configs_net_is_refused_not_ignored(capsys, tmp_path):
    config = str(EXAMPLES / "n4.toml")
    for args, named in ((["predict", config, "--input", "i.npy", "--output", "o.zarr", "--tta", "flips"], "--tta"),
                        (["plan", config, "--shape", "50,50", "--overlap", "0.2"], "--overlap"),
                        (["profile", config, "--activation", "sigmoid"], "--activation"),
                        (["info", config, "--dims", "2", "--in-channels", "3"], "--dims, --in-channels are")):
        assert_one_line_exit_2(args, capsys, f"{named} ")
    assert not (tmp_path / "o.zarr").exists()


def test_a_demo_of_zero_steps_is_refused_before_it_writes_its_data(capsys, tmp_path):
    assert_one_line_exit_2(["demo", "--out", str(tmp_path / "demo"), "--steps", "0"], capsys,
                           "argument --steps: '0' is invalid; expected a positive whole number")
    assert not (tmp_path / "demo").exists()  # it wrote the volumes, then the training refused 0 steps


def assert_one_line_exit_2(args, capsys, message):
    """argparse's mistakes exit (SystemExit), densepred's return 2: either way, exit code 2."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert message in err, err


def test_bad_shape_option(capsys):
    assert main(["info", str(EXAMPLES / "n4.toml"), "--input-shape", "1,2,3"]) == 2
    assert "--input-shape '1,2,3' is invalid; expected 2 positive integers" in capsys.readouterr().err


def test_sighup_ends_the_command_like_an_interrupt_unless_nohup_ignores_it():
    import signal

    import pytest

    from densepred.interfaces.signals import terminate_cleanly

    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with pytest.raises(KeyboardInterrupt), terminate_cleanly():
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # given back
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a command
        with terminate_cleanly():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)  # ignored: the command goes on
    finally:
        signal.signal(signal.SIGHUP, before)
