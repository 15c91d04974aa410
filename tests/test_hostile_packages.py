"""Hostile bioimage.io packages, built here: code named in ``import_from``, files named outside the
package folder (``..``, absolute paths, symlinks out), zip member names that climb out, symlink
members, zip bombs. Each is refused in one line before any of its code runs or any byte of it is
unpacked; a package's own code runs only after a one-line notice; unpacked folders are private,
shared by calls on one file and removed on exit, a SIGTERM included."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import densepred
from densepred.interfaces.cli import main
from densepred.networks import bioimageio
from tests.test_foreign import UNet, trained_looking
from tests.test_foreign_files import zoo_package
from tests.test_reliability_files import one_error_line

pytest.importorskip("bioimageio.spec")


@pytest.fixture
def package(tmp_path):
    rdf, _ = zoo_package(tmp_path / "zoo")
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((12, 16, 16), dtype=np.float32))
    return rdf


def run(rdf, tmp_path, *extra):
    return main(["predict", "--model-file", str(rdf), "--input", str(tmp_path / "in.npy"), "--output",
                 str(tmp_path / "out.zarr"), "--quiet", "--mode", "exact", *extra])


def rewrite(rdf, old, new):
    text = rdf.read_text()
    assert old in text
    rdf.write_text(text.replace(old, new))


def test_code_named_by_import_from_is_refused_before_it_runs(package, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    rewrite(package, "architecture: {source: tiny.py, callable: Tiny, kwargs: {width: 3}}",
            f"architecture: {{import_from: os, callable: system, kwargs: {{command: 'touch {marker}'}}}}")
    one_error_line(capsys, run(package, tmp_path), "pass --trust-imports os")
    assert not marker.exists()
    assert not (tmp_path / "out.zarr").exists()


def test_an_architecture_from_a_trusted_package_runs_after_a_notice(package, tmp_path, capsys, caplog):
    model = trained_looking(UNet(depth=1, width=2), seed=3).float()
    torch.save(model.state_dict(), package.parent / "weights.pt")
    rewrite(package, "architecture: {source: tiny.py, callable: Tiny, kwargs: {width: 3}}",
            "architecture: {import_from: tests.test_foreign, callable: UNet, kwargs: {depth: 1, width: 2}}")
    rewrite(package, "channel_names: [a, b]", "channel_names: [a, b, c]")
    one_error_line(capsys, run(package, tmp_path), "pass --trust-imports tests")
    with caplog.at_level(logging.WARNING, logger="densepred"):
        assert run(package, tmp_path, "--trust-imports", "tests") == 0
    assert "running the model code of" in caplog.text
    assert "tests.test_foreign:UNet" in caplog.text
    # in Python a package's name alone is one name, not its letters ('t', 'e', 's' trusted)
    assert densepred.from_bioimageio(package, trust_imports="tests").contract.exact
    with pytest.raises(densepred.DensePredError, match="pass --trust-imports tests"):
        densepred.from_bioimageio(package, trust_imports="t")


@pytest.mark.parametrize("where", ["weights", "architecture"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_package_names_no_file_outside_its_folder(package, tmp_path, capsys, where, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    name = "tiny.py" if where == "architecture" else "weights.pt"
    (outside / name).write_bytes((package.parent / name).read_bytes())
    if how == "symlink":
        (package.parent / name).unlink()
        (package.parent / name).symlink_to(outside / name)
    else:
        target = f"../outside/{name}" if how == "dotdot" else str(outside / name)
        rewrite(package, f"source: {name}", f"source: {target}")
    one_error_line(capsys, run(package, tmp_path), "outside its package folder")


def test_etc_passwd_is_not_opened_as_weights(package, tmp_path, capsys):
    rewrite(package, "source: weights.pt", "source: /etc/passwd")
    one_error_line(capsys, run(package, tmp_path), "outside its package folder")


def zipped(folder, path, names=None, extra=()):
    """The package in ``folder`` as a zip; ``names`` maps a file to the member name it gets."""
    names = names or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, names.get(file.name, file.name))
        for info, data in extra:
            archive.writestr(info, data)
    return path


def test_a_member_named_dotdot_rdf_is_found_inside_the_unpacked_folder(package, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", None)
    (temp / "rdf.yaml").write_text("planted: by another user\n")  # where folder / '../rdf.yaml' would point
    archive = zipped(package.parent, tmp_path / "climb.zip", {"rdf.yaml": "../rdf.yaml"})
    zoo = bioimageio.read_rdf(archive)
    assert zoo.weights.parent.name.startswith("densepred-zoo-")
    assert stat.S_IMODE(zoo.weights.parent.stat().st_mode) == 0o700  # private
    assert bioimageio.read_rdf(archive).weights == zoo.weights  # one unpacked folder per file


def test_a_symlink_member_is_refused(package, tmp_path, capsys):
    link = zipfile.ZipInfo("link.py")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = zipped(package.parent, tmp_path / "link.zip", extra=[(link, "/etc/passwd")])
    one_error_line(capsys, run(archive, tmp_path), "is a symbolic link")


def test_a_zip_bomb_and_a_package_over_the_limit_are_refused_before_unpacking(package, tmp_path, capsys,
                                                                                monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", None)
    bomb = zipped(package.parent, tmp_path / "bomb.zip", extra=[("zeros.bin", bytes(8 * 2**20))])
    one_error_line(capsys, run(bomb, tmp_path), "refused as a zip bomb")
    monkeypatch.setenv("DENSEPRED_UNPACK_LIMIT", "64KiB")
    large = zipped(package.parent, tmp_path / "large.zip",
                   extra=[("noise.bin", np.random.default_rng(0).bytes(100_000))])
    one_error_line(capsys, run(large, tmp_path), "set DENSEPRED_UNPACK_LIMIT")
    assert not list(temp.iterdir())  # nothing was unpacked


@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_the_unpacked_folder_goes_when_the_command_is_terminated(package, tmp_path, stop):
    temp = tmp_path / "tmp"
    temp.mkdir()
    archive = zipped(package.parent, tmp_path / "model.zip")
    np.save(tmp_path / "big.npy", np.random.default_rng(1).random((64, 256, 256), dtype=np.float32))
    victim = subprocess.Popen([sys.executable, "-m", "densepred", "predict", "--model-file", str(archive), "--input",
                               str(tmp_path / "big.npy"), "--output", str(tmp_path / "big.zarr"), "--quiet",
                               "--mode", "exact", "--tile", "16"],
                              env={**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"},
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "big.zarr.densepred" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(temp.glob("densepred-zoo-*")), "the package was not unpacked"
    victim.send_signal(stop)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode != 0, err
    assert not list(temp.glob("densepred-zoo-*"))


def test_the_api_takes_trusted_imports_too(package):
    rewrite(package, "architecture: {source: tiny.py, callable: Tiny, kwargs: {width: 3}}",
            "architecture: {import_from: os, callable: system, kwargs: {command: 'true'}}")
    with pytest.raises(densepred.DensePredError, match="trust_imports=\\['os'\\]"):
        densepred.from_bioimageio(package)
