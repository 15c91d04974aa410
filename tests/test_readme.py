"""The README's newcomer section ("After the demo") and its first cluster command run as written:
each command of their shell blocks, on a scaled-down demo folder (the demo's volumes and config,
a smaller test volume, random weights in place of the 1000 trained steps); the napari line opens
its files through densepred's reader instead of a window. The ELEKTRONN import example runs too.

The commands run in this process (``run_as_written``): the same arguments reach the same ``main``
as from a shell, without 3-5 s of CPU to start each one. The shell's own part, a run in the
background killed and resumed, runs in bash in ``make test-slow``; ``densepred --version``
checks the installed command itself."""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import densepred
from densepred.interfaces.cli import main
from densepred.interfaces.demo import write_example
from densepred.interfaces.napari_plugin.reader import get_reader
from densepred.networks.weights import save_weights

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
OPEN_IN_READER = ("import sys; from densepred.interfaces.napari_plugin.reader import get_reader; "
                  "[get_reader(p)(p) for p in sys.argv[1:]]")


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.DOTALL)


def as_test(block: str, demo: Path) -> str:
    """The block with the demo folder and this environment's commands; every command but the
    background run and its kill must succeed."""
    lines = []
    for written in block.strip().splitlines():
        line = written.replace(".venv/bin/", f"{BIN}/").replace("demo/", f"{demo}/")
        if line.startswith(f"{BIN}/napari"):
            paths = [p for p in line.split()[1:] if not p.startswith("--") and p != "densepred"]
            line = f"{sys.executable} -c \"{OPEN_IN_READER}\" " + " ".join(paths)
        lines.append(line if line.endswith("&") or "kill" in line else f"{line} || exit 97")
    return "\n".join(lines)


@pytest.fixture
def demo(tmp_path):
    """A folder like the repository's after ``make demo``: demo/ (scaled down) and examples/."""
    folder = tmp_path / "demo"
    folder.mkdir()
    config = write_example(folder, steps=10, test_shape=(20, 96, 96))
    save_weights(densepred.build_net(densepred.load_config(config)), folder / "run" / "membranes-LAST.safetensors")
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    return folder


def run_as_written(block: str, cwd: Path) -> str:
    """Each command of ``block`` (``\\`` continuations joined) as a shell in ``cwd`` runs it, in
    this process: ``densepred`` through the CLI's ``main``, ``python script.py`` through runpy,
    ``napari`` through densepred's reader; each must succeed. Returns what they print."""
    printed = io.StringIO()
    for line in block.replace("\\\n", " ").strip().splitlines():
        program, *arguments = shlex.split(line)
        errors = io.StringIO()
        with contextlib.chdir(cwd), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            try:
                code = run_command(Path(program).name, arguments)
            except SystemExit as ended:  # argparse, a script's sys.exit
                code = ended.code or 0
        assert code == 0, f"{line}\n{errors.getvalue()}"
    return printed.getvalue()


def run_command(program: str, arguments: list[str]) -> int:
    if program == "densepred":
        return main(arguments)
    if program == "python":
        script, *rest = arguments
        with mock.patch.object(sys, "argv", [script, *rest]):
            runpy.run_path(script, run_name="__main__")
        return 0
    if program == "napari":
        for path in (p for p in arguments if not p.startswith("--") and p != "densepred"):
            get_reader(path)(path)
        return 0
    raise AssertionError(f"the README runs {program}: teach run_command to run it")


def complete(demo: Path, output: str) -> bool:
    return json.loads((demo / f"{output}.densepred" / "run.json").read_text())["complete"]


def test_the_newcomer_section_has_three_blocks():
    assert len(shell_blocks(section("After the demo"))) == 3


def test_the_newcomers_prediction_and_viewer_line_work_as_written(demo):
    run_as_written(shell_blocks(section("After the demo"))[0], demo.parent)
    assert complete(demo, "test.zarr")


@pytest.mark.slow  # 8 s, half of it sleep; make test resumes killed runs: test_ome_zarr, test_storage_faults
def test_the_newcomers_kill_and_resume_work_as_written(demo):
    done = subprocess.run(["bash", "-c", as_test(shell_blocks(section("After the demo"))[1], demo)],
                          capture_output=True, text=True, check=False, cwd=README.parent)
    assert done.returncode == 0, done.stderr
    assert complete(demo, "again.zarr")


def test_the_newcomers_zarr_plan_and_labels_then_the_first_cluster_run_work_as_written(demo):
    printed = run_as_written(shell_blocks(section("After the demo"))[2], demo.parent)
    assert "tile" in printed  # the plan
    run_as_written(shell_blocks(section("On a cluster"))[0], demo.parent)  # it continues from raw.zarr
    assert complete(demo, "raw-pred.zarr")
    assert complete(demo, "cluster.zarr")
    assert (demo / "raw.zarr" / "zarr.json").exists()


def test_the_readme_names_the_version_option():
    done = subprocess.run([str(BIN / "densepred"), "--version"], capture_output=True, text=True, check=True)
    assert densepred.__version__ in done.stdout
    assert "densepred --version" in README.read_text()


def test_the_elektronn_import_runs_as_written(tmp_path):
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    printed = run_as_written(shell_blocks(section("Models you already have"))[0], tmp_path)
    assert "field of view" in printed
    assert densepred.load_config(tmp_path / "imported" / "membranes_e1.toml").network.dims == 3
