"""kill -9 a real ``densepred predict`` at random moments, resume it, and compare bytes.

For each trial: one uninterrupted run, then a run killed with SIGKILL after a random delay,
then ``--resume``; the resumed output's chunk files must equal the uninterrupted run's byte
for byte.

    python benchmarks/kill_resume.py --trials 10
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
from densepred.weights import save_weights

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "kill.toml"
        config.write_text(CONFIG)
        torch.manual_seed(0)
        save_weights(densepred.build_net(densepred.load_config(config)), work / "run" / "kill-LAST.safetensors")
        np.save(work / "raw.npy", np.random.default_rng(0).random((40, 300, 300), dtype=np.float32))
        base = [sys.executable, "-m", "densepred.cli", "predict", str(config), "--input", str(work / "raw.npy"),
                "--tile", "8,41,41", "--mode", "mfp", "--batch-size", "3", "--quiet"]
        start = time.monotonic()
        subprocess.run([*base, "--output", str(work / "whole.zarr")], check=True)
        seconds = time.monotonic() - start
        reference = chunk_bytes(work / "whole.zarr")
        print(f"uninterrupted run: {seconds:.1f} s, {len(reference)} chunk files")
        identical = 0
        for trial in range(args.trials):
            out = work / "cut.zarr"
            delay = rng.uniform(0.0, seconds)
            victim = subprocess.Popen([*base, "--output", str(out), "--overwrite"], stdout=subprocess.DEVNULL)
            time.sleep(delay)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            log = work / "cut.zarr.densepred" / "done.log"
            record = work / "cut.zarr.densepred" / "run.json"
            if log.exists():
                state = f"{len(log.read_text().split(chr(10))) - 1} tiles recorded"
            elif record.exists() and '"complete": true' in record.read_text():
                state = "the output complete (the run had finished, or had not yet replaced the last one)"
            else:
                state = "no run record yet"
            resumed = subprocess.run([*base, "--output", str(out), "--resume"], capture_output=True, text=True,
                                     check=False)
            if resumed.returncode != 0:
                raise SystemExit(f"resume failed: {resumed.stderr.strip()}")
            got = chunk_bytes(out)
            same = got == reference
            if not same:
                differing = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
                print(f"  differing chunk files: {differing[:10]} ({len(differing)})")
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
