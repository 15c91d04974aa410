"""The README's other examples run as written, scaled down: the ten lines, training and a larger
prediction net, the training section of a config, file-to-file prediction, precision, the
profiler, a MONAI U-Net from Python and from the command line, and the SLURM example as far as a
machine without SLURM allows (its cluster and job built, its job script rendered), make demo's
recipe, a model's profile, and the plan transcripts (what ``densepred plan`` prints, line for
line). The profiler, the MONAI U-Net, precision, make demo, the model's profile and the plan
transcripts take 10-40 s each and run in ``make test-slow``, keeping the default run under 5
minutes. The ten lines and the SLURM example run in this process (``run_python_here``)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import densepred
from densepred.interfaces.demo import write_example
from densepred.networks.weights import save_weights
from tests.test_readme import BIN, README, section, shell_blocks


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def run_python_here(code: str, cwd: Path) -> str:
    """``code`` run as a script in this process, in ``cwd``; what it prints."""
    printed = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(printed):
        exec(compile(code, "<README>", "exec"), {"__name__": "__main__"})
    return printed.getvalue()


def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=cwd,
                          timeout=600)
    assert done.returncode == 0, f"{code}\n{done.stderr}"
    return done.stdout


def run_shell(block: str, cwd: Path, **replace: str) -> None:
    """Every command of ``block`` with this environment's ``densepred``, each one required to succeed."""
    for old, new in replace.items():
        assert old in block, old
        block = block.replace(old, new)
    lines = [f"{BIN}/{line} || exit 97" for line in block.strip().splitlines() if line.startswith("densepred ")]
    done = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, check=False, cwd=cwd,
                          timeout=600)
    assert done.returncode == 0, f"{block}\n{done.stderr}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's config with random weights, its raw volume as raw.zarr and stack.h5:raw."""
    folder = tmp_path_factory.mktemp("demo")
    config = write_example(folder, steps=6, test_shape=(16, 72, 72))
    save_weights(densepred.build_net(densepred.load_config(config)), folder / "run" / "membranes-LAST.safetensors")
    with h5py.File(folder / "test.h5", "r") as f:
        raw = f["raw"][:]
    zarr.create_array(folder / "raw.zarr", data=raw, chunks=(8, 36, 36))
    with h5py.File(folder / "stack.h5", "w") as f:
        f["raw"] = raw
    return folder


def test_the_ten_lines_print_the_geometry_they_show():
    block = python_blocks(section("Ten lines"))[0]
    shown = re.search(r"print\(.*\)\s+# (.*)", block).group(1)
    code = block.replace("(40, 300, 300)", "(12, 70, 70)") + "\nassert probs.shape == (2, 12, 70, 70)\n"
    assert run_python_here(code, README.parent).strip() == shown.strip()


@pytest.mark.slow  # 8-10 s: make test-slow; training, -LAST and a larger net stay in make test (test_training.py)
def test_training_then_a_larger_prediction_net(tmp_path):
    write_example(tmp_path, steps=6, test_shape=(8, 40, 40))  # a config not trained yet
    block = python_blocks(section("Training and prediction nets"))[0]
    code = "import densepred, numpy as np\nvolume = np.random.rand(10, 60, 60).astype(np.float32)\n" + block
    run_python(code + "\nassert probs.shape == (2, 10, 60, 60)\n", tmp_path)
    assert (tmp_path / "run" / "membranes-LAST.safetensors").exists()


def test_the_training_section_shown_is_a_valid_config(demo):
    block = next(b for b in re.findall(r"```toml\n(.*?)```", README.read_text(), re.DOTALL) if "[training]" in b)
    text = (demo / "membranes.toml").read_text()
    text = text[:text.index("[training]")] if "[training]" in text else text
    (demo / "shown.toml").write_text(text + "\n" + block)
    training = densepred.load_config(demo / "shown.toml").training
    assert training.steps == 1000
    assert training.optimizer == "adam"


@pytest.mark.slow  # 12-15 s (CLI processes): make test-slow; the newcomer's commands stay in make test (test_readme.py)
def test_file_to_file_prediction_as_shown(demo):
    block = shell_blocks(section("Predicting files larger than memory"))[0]
    run_shell(block, demo, **{"0:64,0:2048,0:2048": "0:8,0:48,0:48"})
    assert zarr.open_group(demo / "membranes.zarr", mode="r").attrs["densepred"]["complete"] is True
    with h5py.File(demo / "pred.h5", "r") as f:
        assert f["membranes"].dtype == np.uint8
    assert zarr.open_group(demo / "labels.zarr", mode="r")["0"].shape == (8, 48, 48)


@pytest.mark.slow  # 10-15 s: make test-slow
@pytest.mark.usefixtures("emulated_precision")  # a CPU without bfloat16 instructions runs it all the same
def test_precision_as_shown(demo, tmp_path):
    predict, train = shell_blocks(section("Precision"))[0].strip().splitlines()
    run_shell(predict, demo)
    assert zarr.open_group(demo / "pred.zarr", mode="r").attrs["densepred"]["complete"] is True
    write_example(tmp_path, steps=2, test_shape=(8, 40, 40))  # a config not trained yet
    run_shell(train, tmp_path)
    assert (tmp_path / "run" / "membranes-LAST.safetensors").exists()


@pytest.mark.slow  # about 20-40 s: make test-slow
def test_the_profiler_as_shown(tmp_path):
    block = shell_blocks(section("Finding the fastest tile"))[0]
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "m36.toml").write_text((README.parent / "examples" / "m36.toml").read_text())
    run_shell(block, tmp_path, **{"--write": "--write --max-seconds 6 --modes mfp"})
    assert "tile_shape" in (tmp_path / "examples" / "m36.toml").read_text()
    assert any((tmp_path / "profile").iterdir())


@pytest.mark.slow  # about 20-40 s: make test-slow
def test_a_monai_unet_from_python_and_from_the_command_line(tmp_path):
    pytest.importorskip("monai")
    text = section("Models written elsewhere")
    python, shell = python_blocks(text), shell_blocks(text)
    code = python[0].replace("model.load_state_dict(...)", "model.load_state_dict(model.state_dict())")
    code = code.replace("(64, 128, 128)", "(32, 64, 64)")
    setup = "import numpy as np\nvolume = np.random.rand(20, 50, 50).astype(np.float32)\n"
    save = ("\nfrom safetensors.torch import save_file\nsave_file(model.state_dict(), 'unet.safetensors')\n"
            "import zarr\nzarr.create_array('raw.zarr', data=volume)\nassert probs.shape == (3, 20, 50, 50)\n")
    assert "exact tiling possible" in run_python(setup + code + save, tmp_path)
    command = next(b for b in shell if "BasicUNet" in b).replace("\\\n", " ")
    run_shell(command, tmp_path, **{"--tile 64,128,128": "--tile 32,64,64"})
    assert zarr.open_group(tmp_path / "pred.zarr", mode="r")["0"].shape == (3, 20, 50, 50)


@pytest.mark.slow  # about 10-20 s: make test-slow
def test_a_models_profile_as_shown(tmp_path):
    pytest.importorskip("monai")
    block = shell_blocks(section("Finding the fastest tile"))[1]
    assert "--model monai.networks.nets:BasicUNet" in block
    run_shell(block.replace("\\\n", " "), tmp_path, **{"--shape 128,512,512": "--shape 20,70,66",
                                                         "--device cuda --precision bfloat16": "--device cpu"})
    table = (tmp_path / "profile" / "model_profile.csv").read_text().splitlines()
    assert table[0].startswith("precision,window,windows,")
    assert len(table) >= 2


def test_the_slurm_example_builds_its_cluster_and_job(tmp_path):
    pytest.importorskip("dask_jobqueue")
    block = python_blocks(section("On a cluster"))[0]
    before, _, _ = block.partition("with Client(cluster)")
    code = before.replace("cluster.scale(jobs=16)", "script = cluster.job_script()")
    code += ("\nassert '--gres=gpu:1' in script and '--resources GPU=1' in script, script\n"
             "from densepred.running.jobs.job import check_job\ncheck_job(job)\ncluster.close()\n")
    run_python_here(code, tmp_path)


@pytest.mark.slow  # 10-15 s: make test-slow
def test_make_demo_runs_end_to_end_scaled_down(tmp_path):
    assert "make demo" in shell_blocks(section("Two commands"))[0]
    makefile = (README.parent / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t(.*)$", makefile, re.MULTILINE).group(1)
    command = recipe.replace("$(VENV)/bin/", f"{BIN}/") + " --steps 20"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    for name in ("run/membranes-LAST.safetensors", "run/history.csv", "prediction.h5", "demo.png"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "F1" in done.stdout


def transcripts(title: str) -> list[tuple[str, list[str]]]:
    """The ``$ densepred ...`` transcripts of a README section: each command (its continuation
    lines joined) and the lines it is shown to print."""
    found = []
    for block in re.findall(r"```\n(\$ densepred .*?)```", section(title), re.DOTALL):
        command, _, shown = block.partition("\n") if "\\\n" not in block else _joined(block)
        found.append((command.removeprefix("$ "), shown.strip().splitlines()))
    return found


def _joined(block: str) -> tuple[str, str, str]:
    lines = block.splitlines()
    end = next(i for i, line in enumerate(lines) if not line.endswith("\\"))
    command = " ".join(line.rstrip("\\").strip() for line in lines[:end + 1])
    return command, "\n", "\n".join(lines[end + 1:])


@pytest.mark.slow  # about 10-30 s (MONAI's model is probed): make test-slow
def test_the_plan_transcripts_print_what_the_readme_shows(tmp_path):
    pytest.importorskip("monai")
    shown = transcripts("Sizing a job before it runs")
    assert len(shown) == 2
    (tmp_path / "model_profile.csv").write_text("precision,window,windows,seconds_per_window,image_seconds,"
                                                "voxels_per_s,estimated_bytes,peak_bytes,heap_kept,status\n"
                                                "float32,128x272x272,49,10.854,531.845,63090.6,12053473280,,false,ok\n")
    for command, lines in shown:
        cwd = tmp_path if "model_profile.csv" in command else README.parent
        done = subprocess.run(["bash", "-c", f"{BIN}/{command} --device cpu"], capture_output=True, text=True,
                              check=False, cwd=cwd, timeout=600)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines() == lines
