"""What densepred sees of a memory limit set on a cgroup above the process's own (Slurm's job
group, with the task in a group below it), and what a prediction does under it.

Makes a group with ``--limit`` and a group below it without a limit, starts a process in the
lower one, and prints the memory densepred takes as available there (``system.available_ram``),
then runs ``predict_dense`` of m36 (random weights) over a random volume in that process with
the default memory budget: it plans within the limit, or is killed by the kernel when it does
not see it. Needs root and a writable memory controller (cgroup v2, or v1's ``memory``).

    sudo python benchmarks/cgroup_memory.py                         # 4 GiB, 90x300x300, mode auto
    sudo python benchmarks/cgroup_memory.py --shape 160,600,600 --mode mfp
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import resource, sys, numpy as np, densepred
from densepred.system import available_ram
print(f"available to densepred: {available_ram() / 2**30:.2f} GiB", flush=True)
net = densepred.build_net(densepred.load_config(sys.argv[1]))
shape = tuple(int(n) for n in sys.argv[2].split(","))
image = np.random.default_rng(0).random(shape, dtype=np.float32)
try:
    out = densepred.predict_dense(net, image, mode=sys.argv[3])
    print(f"predicted {list(out.shape)}", flush=True)
except densepred.DensePredError as exc:
    print(f"refused: {exc}", flush=True)
"""


def groups(limit: int) -> tuple[Path, Path, str]:
    """A group limited to ``limit`` bytes, a group below it without a limit, and the files that
    give the upper group's peak (v2: memory.peak; v1: memory.max_usage_in_bytes)."""
    v2 = Path("/sys/fs/cgroup")
    controllers = (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").exists() else []
    name = f"densepred-job-{os.getpid()}"
    if "memory" in controllers:
        (v2 / "cgroup.subtree_control").write_text("+memory\n")
        job = v2 / name
        job.mkdir()
        (job / "memory.max").write_text(f"{limit}\n")
        (job / "cgroup.subtree_control").write_text("+memory\n")
        (job / "task").mkdir()
        return job, job / "task", "memory.peak"
    v1 = Path("/sys/fs/cgroup/memory")
    if not (v1 / "memory.limit_in_bytes").exists():
        sys.exit("no writable cgroup memory controller here (run as root on Linux with cgroups)")
    job = v1 / name
    job.mkdir()
    (job / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (job / "task").mkdir()
    return job, job / "task", "memory.max_usage_in_bytes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=4.0, help="GiB, on the upper group")
    parser.add_argument("--shape", default="90,300,300")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    job, task, peak_file = groups(int(args.limit * 2**30))
    try:
        command = [sys.executable, "-c", CHILD, str(ROOT / "examples" / "m36.toml"), args.shape, args.mode]
        done = subprocess.run(["sh", "-c", f'echo $$ > "{task / "cgroup.procs"}" && exec "$@"', "sh", *command],
                              capture_output=True, text=True, timeout=args.timeout, check=False)
        lines = [line for line in done.stdout.splitlines() if not line.startswith("predict")]
        print(f"limit {args.limit:g} GiB on the group above the process's own; m36 over {args.shape}, mode {args.mode}")
        for line in lines:
            print(f"  {line}")
        if done.returncode < 0:
            print(f"  killed by signal {-done.returncode} (the kernel's OOM killer at the group's limit)")
        print(f"  the group's peak: {int((job / peak_file).read_text()) / 2**30:.2f} GiB")
    finally:
        task.rmdir()
        job.rmdir()


if __name__ == "__main__":
    main()
