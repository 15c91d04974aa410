"""kill -9 a real ``densepred predict`` at random moments, resume it, and compare bytes.

For each trial: one uninterrupted run, then a run killed with SIGKILL after a random delay,
then ``--resume``. A zarr output's chunk files must equal the uninterrupted run's byte for
byte; for HDF5 (``--format h5``) the dataset's bytes must.

    python benchmarks/kill_resume.py --trials 10
    python benchmarks/kill_resume.py --trials 10 --format h5
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import densepred
from densepred.networks.weights import save_weights

CONFIG = """name = "kill"
save_dir = "run"

[network]
dims = 3
in_channels = 1
n_classes = 3
layers = [
  { filters = 8, kernel = [1, 3, 3], pool = [1, 2, 2] },
  { filters = 8, kernel = 3 },
]
"""


def chunk_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def output_bytes(path: Path) -> dict[str, bytes]:
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            return {"pred": f["pred"][...].tobytes()}
    return chunk_bytes(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--format", choices=["zarr", "h5"], default="zarr", help="output format")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "kill.toml"
        config.write_text(CONFIG)
        torch.manual_seed(0)
        save_weights(densepred.build_net(densepred.load_config(config)), work / "run" / "kill-LAST.safetensors")
        np.save(work / "raw.npy", np.random.default_rng(0).random((40, 300, 300), dtype=np.float32))
        base = [sys.executable, "-m", "densepred", "predict", str(config), "--input", str(work / "raw.npy"),
                "--tile", "8,41,41", "--mode", "mfp", "--batch-size", "3", "--quiet"]
        start = time.monotonic()
        whole, out = work / f"whole.{args.format}", work / f"cut.{args.format}"
        spec = (lambda path: f"{path}:pred") if args.format == "h5" else str
        subprocess.run([*base, "--output", spec(whole)], check=True)
        seconds = time.monotonic() - start
        reference = output_bytes(whole)
        print(f"uninterrupted run: {seconds:.1f} s, output {whole.name}")
        identical = 0
        for trial in range(args.trials):
            delay = rng.uniform(0.0, seconds)
            victim = subprocess.Popen([*base, "--output", spec(out), "--overwrite"], stdout=subprocess.DEVNULL)
            time.sleep(delay)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            folder = work / (f"{out.name}.pred.densepred" if args.format == "h5" else f"{out.name}.densepred")
            log, record = folder / "done.log", folder / "run.json"
            if log.exists():
                state = f"{len(log.read_text().split(chr(10))) - 1} tiles recorded"
            elif record.exists() and '"complete": true' in record.read_text():
                state = "the output complete (the run had finished, or had not yet replaced the last one)"
            else:
                state = "no run record yet"
            resumed = subprocess.run([*base, "--output", spec(out), "--resume"], capture_output=True, text=True,
                                     check=False)
            if resumed.returncode != 0:
                raise SystemExit(f"resume failed: {resumed.stderr.strip()}")
            got = output_bytes(out)
            same = got == reference
            if not same:
                differing = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
                print(f"  differing: {differing[:10]} ({len(differing)})")
                import shutil
                shutil.copytree(work, Path(f"/tmp/kill-failure-{trial + 1}"), dirs_exist_ok=True)
            identical += same
            print(f"trial {trial + 1}: killed after {delay:.2f} s with {state}; "
                  f"resume: {resumed.stdout.strip()}; byte-identical: {same}")
        print(f"{identical} of {args.trials} resumed outputs byte-identical to the uninterrupted run")
        if identical != args.trials:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
