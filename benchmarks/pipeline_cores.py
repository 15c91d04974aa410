"""How the file pipeline scales with cores: the near-free net of pipeline_ceiling.py, file to file,
run several times in one process per core set, so process start and a first run's page faults
(large and variable on a VM) do not count.

One child process per core set (``taskset``) runs ``densepred predict`` ``--runs`` times
through its Python entry point and reports each run's wall, user and system seconds; the
fastest run of each set is compared. Core sets are interleaved ``--repeats`` times.

    python benchmarks/pipeline_cores.py                           # 256 x 1024 x 1024, cores 0 and 0,1
    python benchmarks/pipeline_cores.py --sets 0,0-3 --depth 512  # a 4-core machine
    python benchmarks/pipeline_cores.py --input hdf5              # a gzip HDF5 input
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline_ceiling import textured_volume, trivial_net

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
        runs: dict[str, list[list[float]]] = {cores: [] for cores in sets}
        for _ in range(args.repeats):
            for cores in sets:
                child = ["taskset", "-c", cores, sys.executable, "-c", CHILD, str(args.runs), *command]
                done = subprocess.run(child, check=True, capture_output=True, text=True)
                runs[cores] += json.loads(done.stdout.strip().splitlines()[-1])
        voxels = args.depth * args.side * args.side
        best = {cores: min(runs[cores]) for cores in sets}
        for cores in sets:
            wall, user, system = best[cores]
            busy = (user + system) / wall
            print(f"cores {cores}: fastest {wall:.2f} s ({voxels / wall / 1e6:.1f} Mvox/s, {busy:.2f} cores busy); "
                  f"all: {' '.join(f'{r[0]:.2f}' for r in runs[cores])}")
        print(json.dumps({"speedup": round(best[sets[0]][0] / best[sets[-1]][0], 2),
                          "sets": sets, "depth": args.depth, "classes": args.classes, "levels": args.levels}))


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
