"""The README's newcomer section ("After the demo") and its first cluster command run as written:
each command of their shell blocks, on a scaled-down demo folder (the demo's volumes and config,
a smaller test volume, random weights in place of the 1000 trained steps); the napari line opens
its files through densepred's reader instead of a window. The ELEKTRONN import example runs too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import densepred
from densepred.interfaces.demo import write_example
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
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    config = write_example(folder, steps=10, test_shape=(20, 96, 96))
    save_weights(densepred.build_net(densepred.load_config(config)), folder / "run" / "membranes-LAST.safetensors")
    return folder


def run_block(block: str, demo: Path) -> None:
    done = subprocess.run(["bash", "-c", as_test(block, demo)], capture_output=True, text=True, check=False,
                          cwd=README.parent)
    assert done.returncode == 0, f"{block}\n{done.stderr}"


def complete(demo: Path, output: str) -> bool:
    return json.loads((demo / f"{output}.densepred" / "run.json").read_text())["complete"]


def test_the_newcomer_section_has_three_blocks():
    assert len(shell_blocks(section("After the demo"))) == 3


def test_the_newcomers_prediction_and_viewer_line_work_as_written(demo):
    run_block(shell_blocks(section("After the demo"))[0], demo)
    assert complete(demo, "test.zarr")


@pytest.mark.slow  # 8 s, half of it sleep; make test resumes killed runs: test_ome_zarr, test_storage_faults
def test_the_newcomers_kill_and_resume_work_as_written(demo):
    run_block(shell_blocks(section("After the demo"))[1], demo)
    assert complete(demo, "again.zarr")


def test_the_newcomers_zarr_plan_and_labels_then_the_first_cluster_run_work_as_written(demo):
    run_block(shell_blocks(section("After the demo"))[2], demo)
    run_block(shell_blocks(section("On a cluster"))[0], demo)  # it continues from raw.zarr
    assert complete(demo, "raw-pred.zarr")
    assert complete(demo, "cluster.zarr")
    assert (demo / "raw.zarr" / "zarr.json").exists()


def test_the_readme_names_the_version_option():
    done = subprocess.run([str(BIN / "densepred"), "--version"], capture_output=True, text=True, check=True)
    assert densepred.__version__ in done.stdout
    assert "densepred --version" in README.read_text()


def test_the_elektronn_import_runs_as_written(tmp_path):
    block = shell_blocks(section("Models you already have"))[0]
    script = as_test(block, tmp_path).replace("examples/", f"{README.parent / 'examples'}/")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, f"{block}\n{done.stderr}"
    assert "field of view" in done.stdout
    assert densepred.load_config(tmp_path / "imported" / "membranes_e1.toml").network.dims == 3
