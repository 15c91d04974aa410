"""How the file pipeline scales with cores: the near-free net of pipeline_ceiling.py, file to file,
run several times in one process per core set, so process start and a first run's page faults
(large and variable on a VM) do not count.

One child process per core set (``taskset``) runs ``densepred predict`` ``--runs`` times
through its Python entry point and reports each run's wall, user and system seconds; the
fastest run of each set is compared. Core sets are interleaved ``--repeats`` times. The
speedup is given twice: of the fastest runs, and of the medians of the runs after each
process's first (on a shared VM the fastest runs vary most).

    python benchmarks/pipeline_cores.py                           # 256 x 1024 x 1024, cores 0 and 0,1
    python benchmarks/pipeline_cores.py --sets 0,0-3 --depth 512  # a 4-core machine
    python benchmarks/pipeline_cores.py --input hdf5              # a gzip HDF5 input
    python benchmarks/pipeline_cores.py --ceiling                 # and the machine's own ceiling

``--ceiling`` also runs the plain program of pipeline_ceiling.py (zarr reads, NumPy's
per-voxel work, zarr writes densepred's shards) as a perfectly parallel job: one copy on the
first core set's cores over the whole volume, against one copy per core of the last set, each
on its share of the z shards, at once. Their speedup is what these cores give this work
without any sharing between threads: the ceiling a pipeline's own speedup is measured against
(memory bandwidth and caches shared by the cores lower it below the core count). Each of the
plain program's stages (zarr's reads and decompression, NumPy's per-voxel work, zarr's
compression and writes) is timed too, and its speedup printed, so what falls short is named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline_ceiling import PLAIN, textured_volume, trivial_net

CHILD = r"""
import json, resource, sys, time
from densepred.interfaces.cli import main
runs, args = int(sys.argv[1]), sys.argv[2:]
times = []
for _ in range(runs):
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    main(args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    times.append([time.perf_counter() - start, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime])
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--sets", default="0,0-1", help="taskset core lists, separated by commas")
    parser.add_argument("--runs", type=int, default=4, help="runs per child process")
    parser.add_argument("--repeats", type=int, default=2, help="child processes per core set, interleaved")
    parser.add_argument("--classes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--levels", type=int, default=1, help="pyramid levels; 0 = densepred's default")
    parser.add_argument("--input", choices=("zarr", "hdf5"), default="zarr",
                        help="the input's format: zarr (zstd) or HDF5 (gzip), 64^3 chunks either way")
    parser.add_argument("--work", default=None, help="folder for the volumes (default: a temporary one)")
    parser.add_argument("--tile", default=None, help="densepred's --tile (default: its plan's)")
    parser.add_argument("--ceiling", action="store_true", help="also time the plain program, one copy per core")
    args = parser.parse_args()
    sets = args.sets.split(",")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        config = trivial_net(work)
        source = str(textured_volume(work / "in.zarr", (args.depth, args.side, args.side)))
        if args.input == "hdf5":
            source = _as_hdf5(source, work / "in.h5")
        command = ["predict", str(config), "--input", str(source), "--output", str(work / "out.zarr"), "--mirror",
                   "--dtype", "uint8", "--quiet", "--overwrite"]
        command += ["--classes", "1"] if args.classes == 1 else []
        command += ["--levels", str(args.levels)] if args.levels else []
        command += ["--tile", args.tile] if args.tile else []
        runs: dict[str, list[list[float]]] = {cores: [] for cores in sets}
        warm: dict[str, list[list[float]]] = {cores: [] for cores in sets}
        for _ in range(args.repeats):
            for cores in sets:
                child = ["taskset", "-c", cores, sys.executable, "-c", CHILD, str(args.runs), *command]
                done = subprocess.run(child, check=True, capture_output=True, text=True)
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                runs[cores] += measured
                warm[cores] += measured[1:]  # a process's first run pays its page faults and imports
        voxels = args.depth * args.side * args.side
        best = {cores: min(runs[cores]) for cores in sets}
        middle = {cores: statistics.median(r[0] for r in warm[cores] or runs[cores]) for cores in sets}
        for cores in sets:
            wall, user, system = best[cores]
            busy = (user + system) / wall
            print(f"cores {cores}: fastest {wall:.2f} s ({voxels / wall / 1e6:.1f} Mvox/s, {busy:.2f} cores busy); "
                  f"median of the runs after each process's first {middle[cores]:.2f} s; "
                  f"all: {' '.join(f'{r[0]:.2f}' for r in runs[cores])}")
        summary = {"speedup": round(best[sets[0]][0] / best[sets[-1]][0], 2),
                   "median_speedup": round(middle[sets[0]] / middle[sets[-1]], 2), "sets": sets, "depth": args.depth,
                   "classes": args.classes, "levels": args.levels}
        if args.ceiling:
            summary["ceiling"] = _ceiling(args, sets, source, work)
        print(json.dumps(summary))


def _ceiling(args: argparse.Namespace, sets: list[str], source: str, work: Path) -> float:
    """The plain program's speedup from one copy on ``sets[0]`` to one copy per core of
    ``sets[-1]``, each over its share of the z shards (fastest of ``--repeats`` each)."""
    import zarr

    like = zarr.open_array(work / "out.zarr" / "0")
    zarr.create_array(work / "plain.zarr", shape=like.shape, chunks=like.chunks, shards=like.shards, dtype="uint8",
                      compressors=like.compressors, fill_value=0, overwrite=True)
    depth = like.shards[1]
    cores = _cores(sets[-1])
    shards = -(-args.depth // depth)
    bounds = [min(args.depth, depth * (shards * i // len(cores))) for i in range(len(cores) + 1)]
    plain = [sys.executable, "-c", PLAIN, source, str(work / "plain.zarr"), str(work / "out.zarr" / "0"),
             str(args.classes)]
    times: dict[str, list[float]] = {"one": [], "all": []}
    stages: dict[str, list[dict[str, float]]] = {"one": [], "all": []}  # per run: each stage's slowest copy
    for _ in range(args.repeats):
        for name, parts in (("one", [(sets[0], 0, args.depth)]),
                            ("all", [(str(c), z0, z1) for c, z0, z1 in zip(cores, bounds, bounds[1:], strict=False)
                                     if z1 > z0])):
            start_at = time.time() + 3.0  # every copy has opened its arrays by then, and starts at once
            copies = [subprocess.Popen(["taskset", "-c", core, *plain, str(z0), str(z1), str(start_at)],
                                       stdout=subprocess.PIPE, text=True) for core, z0, z1 in parts]
            reports = [json.loads(copy.communicate()[0].strip().splitlines()[-1]) for copy in copies]
            if any(copy.returncode for copy in copies):
                raise SystemExit("a copy of the plain program failed")
            times[name].append(max(r["loop_s"] for r in reports))
            stages[name].append({stage: max(r[stage] for r in reports) for stage in STAGES})
    speedup = min(times["one"]) / min(times["all"])
    for stage in STAGES:  # each stage's fastest run, one copy against the slowest of the parallel copies
        one, all_ = (min(run[stage] for run in stages[name]) for name in ("one", "all"))
        print(f"  {stage[:-2]}: one copy {one:.2f} s, {len(cores)} copies {all_:.2f} s each at most, "
              f"{one / all_:.2f}x")
    print(f"plain program (its loop, without process start), one copy on cores {sets[0]}: fastest "
          f"{min(times['one']):.2f} s; one copy per core of "
          f"{sets[-1]}: fastest {min(times['all']):.2f} s; ceiling {speedup:.2f}x (all: "
          f"{' '.join(f'{t:.2f}' for t in times['one'])} | {' '.join(f'{t:.2f}' for t in times['all'])})")
    return round(speedup, 2)


STAGES = ("read_s", "math_s", "write_s")  # the plain program's: zarr reads, NumPy's work, zarr writes


def _cores(text: str) -> list[int]:
    """A taskset core list (``0-3,6``) as core numbers."""
    cores: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores += list(range(int(low), int(high or low) + 1))
    return cores


def _as_hdf5(source: str, path: Path) -> str:
    """The zarr volume copied into a gzip-compressed HDF5 dataset of 64^3 chunks."""
    import h5py
    import zarr

    volume = zarr.open_array(source, mode="r")
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("raw", shape=volume.shape, dtype=volume.dtype, chunks=(64, 64, 64),
                                      compression="gzip")
        for z in range(0, volume.shape[0], 64):
            dataset[z:z + 64] = volume[z:z + 64]
    return f"{path}:raw"


if __name__ == "__main__":
    main()
