"""``densepred predict`` under a cgroup CPU quota (``docker run --cpus``, a Kubernetes CPU limit):
torch's own thread count against the one densepred's command line fits to the quota.

A quota is CPU time per period, not cores: every core of the host stays visible, torch starts
a thread per core, and the threads beyond the quota are stopped until the next period while
the others wait for them at each parallel region's end. The command line now runs as many
threads as the quota keeps busy (``networks.devices.fit_cpu_threads``); ``OMP_NUM_THREADS``
set by hand is kept, which is how the run "as before" is made here.

Needs root and a writable cgroup file system (v2, or v1's ``cpu`` hierarchy). Runs are
interleaved, each in a fresh process:

    sudo python benchmarks/cpu_quota.py                   # quota 1 CPU, neuro3d, 64x256x256
    sudo python benchmarks/cpu_quota.py --quota 2 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

import densepred
from densepred.cgroups import affinity_cores
from densepred.networks.weights import save_weights

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 100_000


def quota_group(quota: float) -> tuple[Path, str]:
    """A new cgroup with ``quota`` CPUs of time, and the file a process joins it by."""
    v2 = Path("/sys/fs/cgroup")
    controllers = (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").exists() else []
    if "cpu" in controllers:
        group = v2 / f"densepred-quota-{os.getpid()}"
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(quota * PERIOD)} {PERIOD}\n")
        return group, "cgroup.procs"
    for name in ("cpu", "cpu,cpuacct"):
        if (Path("/sys/fs/cgroup") / name / "cpu.cfs_quota_us").exists():
            group = Path("/sys/fs/cgroup") / name / f"densepred-quota-{os.getpid()}"
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(f"{PERIOD}\n")
            (group / "cpu.cfs_quota_us").write_text(f"{int(quota * PERIOD)}\n")
            return group, "cgroup.procs"
    sys.exit("no writable cgroup cpu controller here (run as root on Linux with cgroups)")


def prepared(folder: Path, shape: tuple[int, ...]) -> tuple[Path, Path]:
    config = folder / "neuro3d.toml"
    shutil.copy(ROOT / "examples" / "neuro3d.toml", config)
    cfg = densepred.load_config(config)
    torch.manual_seed(0)
    save_weights(densepred.build_net(cfg), densepred.networks.weights.last_path(cfg.save_dir, cfg.name))
    with h5py.File(folder / "raw.h5", "w") as f:
        f["raw"] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    return config, folder / "raw.h5"


def timed_run(group: Path, procs: str, env: dict[str, str], config: Path, raw: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "densepred", "predict", str(config), "--input", f"{raw}:raw",
               "--output", str(out), "--device", "cpu", "--quiet"]
    start = time.perf_counter()
    subprocess.run(["sh", "-c", f'echo $$ > "{group / procs}" && exec "$@"', "sh", *command], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quota", type=float, default=1.0, help="CPUs of time per period")
    parser.add_argument("--shape", default="64,256,256")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    group, procs = quota_group(args.quota)
    try:
        with tempfile.TemporaryDirectory(prefix="densepred-quota-") as name:
            folder = Path(name)
            config, raw = prepared(folder, shape)
            plain = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            settings = {f"torch's own count ({affinity_cores()} threads, as before)":
                        {**plain, "OMP_NUM_THREADS": str(affinity_cores())},
                        "fitted to the quota (now)": plain}
            times: dict[str, list[float]] = {k: [] for k in settings}
            for _ in range(args.runs):
                for label, env in settings.items():
                    times[label].append(timed_run(group, procs, env, config, raw, folder / "out.zarr"))
    finally:
        group.rmdir()
    print(f"quota {args.quota:g} CPU, {affinity_cores()} cores visible, neuro3d over {list(shape)}, runs {args.runs}")
    for label, seconds in times.items():
        print(f"  {label}: best {min(seconds):.2f} s, all {[round(s, 2) for s in seconds]}")


if __name__ == "__main__":
    main()
