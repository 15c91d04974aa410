"""Is the file pipeline the bottleneck? A near-free network, file to file, beside a plain program.

densepred runs a 1x1x1 network (one 1x1x1 convolution to two classes: almost no compute) from a uint8 zarr
volume to OME-Zarr with ``densepred predict --mirror --dtype uint8``. The plain program does
the least any tool must do per voxel: zarr reads the same input, NumPy converts to float, takes
a two-class softmax and encodes uint8, and zarr writes an array of the same shards, chunks and
codecs as densepred's level 0, one shard at a time.

Both run as fresh processes on two volumes that differ only in depth; the marginal rate
(voxels of the difference over seconds of the difference) leaves process start and imports
out. Each run is repeated and the fastest kept. "cores" is CPU seconds over wall seconds.

    python benchmarks/pipeline_ceiling.py                        # 64 and 128 x 1024 x 1024, one class, one level
    python benchmarks/pipeline_ceiling.py --classes 2 --levels 0  # two classes, the default pyramid
    python benchmarks/pipeline_ceiling.py --cores 0               # on core 0 only (taskset)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

TRIVIAL = """name = "trivial"
save_dir = "{run}"
[network]
dims = 3
in_channels = 1
n_classes = 2
layers = []  # one 1x1x1 convolution from the input to the two classes
"""

# the plain program: run as its own process, like densepred
PLAIN = r"""
import json, sys, time
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

src, dst, like, classes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
level0 = zarr.open_array(like)  # densepred's level 0: the same shape, shards, chunks and codecs
image = zarr.open_array(src, mode="r")
if len(sys.argv) > 7:  # z0 z1 START: a part of the volume, into an output made beforehand, from time START
    z0, z1, out = int(sys.argv[5]), int(sys.argv[6]), zarr.open_array(dst, mode="r+")
    time.sleep(max(0.0, float(sys.argv[7]) - time.time()))
else:
    z0, z1 = 0, image.shape[0]
    out = zarr.create_array(dst, shape=level0.shape, chunks=level0.chunks, shards=level0.shards, dtype="uint8",
                            compressors=level0.compressors, fill_value=0, overwrite=True)
shard = level0.shards[1:]
weights = np.array([0.7, -0.3], np.float32)
bias = np.array([0.1, -0.1], np.float32)
stages = {"read_s": 0.0, "math_s": 0.0, "write_s": 0.0}  # wall time of each stage, one after another
start = time.time()
for z in range(z0, z1, shard[0]):
    for y in range(0, image.shape[1], shard[1]):
        for x in range(0, image.shape[2], shard[2]):
            box = (slice(z, z + shard[0]), slice(y, y + shard[1]), slice(x, x + shard[2]))
            t0 = time.perf_counter()
            raw = image[box]
            t1 = time.perf_counter()
            v = raw.astype(np.float32) / 255.0
            d = (weights[1] - weights[0]) * v + (bias[1] - bias[0])   # class 1's logit minus class 0's
            p1 = 1.0 / (1.0 + np.exp(-d))                             # the two-class softmax
            p = np.stack([1.0 - p1, p1])[2 - classes:]
            encoded = np.rint(p * 255.0).astype(np.uint8)
            t2 = time.perf_counter()
            out[(slice(None), *box)] = encoded
            t3 = time.perf_counter()
            stages["read_s"] += t1 - t0
            stages["math_s"] += t2 - t1
            stages["write_s"] += t3 - t2
print(json.dumps({"loop_s": time.time() - start, **stages}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="64,128", help="the two volume depths (z); y and x are --side")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--classes", type=int, choices=(1, 2), default=1, help="1: --classes 1, 2: both")
    parser.add_argument("--levels", type=int, default=1, help="pyramid levels; 0 = densepred's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", default=None, help="taskset core list, e.g. 0 or 0,1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--extra", default="", help="more densepred predict options, as one string")
    parser.add_argument("--work", default=None, help="folder for the volumes (default: a temporary one)")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        config = trivial_net(work)
        inputs = {d: textured_volume(work / f"in{d}.zarr", (d, args.side, args.side)) for d in depths}
        runs: dict[tuple[str, int], list] = {}
        for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
            for d in depths:
                runs.setdefault(("densepred", d), []).append(
                    _densepred(args, config, inputs[d], work / f"out{d}.zarr"))
                like = str(work / f"out{d}.zarr" / "0")
                runs.setdefault(("plain", d), []).append(_run(args, [
                    sys.executable, "-c", PLAIN, str(inputs[d]), str(work / f"plain{d}.zarr"), like,
                    str(args.classes)]))
        rows = []
        for d in depths:
            ours, plain = (min(runs[(who, d)], key=lambda r: r[0]) for who in ("densepred", "plain"))
            rows.append((d, d * args.side * args.side, ours, plain))
            print(f"{d}x{args.side}x{args.side}: densepred {ours[0]:.2f} s ({ours[1]:.2f} cores, "
                  f"{ours[2] / 2**30:.2f} GiB peak), plain {plain[0]:.2f} s ({plain[1]:.2f} cores); all runs: "
                  f"{' '.join(f'{r[0]:.2f}' for r in runs[('densepred', d)])} | "
                  f"{' '.join(f'{r[0]:.2f}' for r in runs[('plain', d)])}", flush=True)
        (d0, v0, o0, p0), (d1, v1, o1, p1) = rows[0], rows[-1]
        ours_rate = (v1 - v0) / max(o1[0] - o0[0], 1e-9) / 1e6
        plain_rate = (v1 - v0) / max(p1[0] - p0[0], 1e-9) / 1e6
        summary = {"densepred_mvox_s": round(ours_rate, 1), "plain_mvox_s": round(plain_rate, 1),
                   "ratio": round(ours_rate / plain_rate, 3), "cores": args.cores or "all",
                   "classes": args.classes, "levels": args.levels}
        print(f"marginal rate ({d0}->{d1} deep): densepred {ours_rate:.1f} Mvox/s, plain {plain_rate:.1f} Mvox/s, "
              f"ratio {ours_rate / plain_rate:.2f}")
        print(json.dumps(summary))


def trivial_net(work: Path) -> Path:
    import densepred
    from densepred.networks.weights import save_weights

    config = work / "trivial.toml"
    config.write_text(TRIVIAL.format(run=work / "run"))
    (work / "run").mkdir()
    rng = np.random.default_rng(0)
    net = densepred.build_net(densepred.load_config(config))
    for p in net.parameters():  # fixed small weights, so the prediction is not constant
        p.data[:] = __import__("torch").from_numpy(rng.normal(0, 0.5, p.shape).astype(np.float32))
    save_weights(net, work / "run" / "trivial-LAST.safetensors")
    return config


def textured_volume(path: Path, shape: tuple[int, int, int]) -> Path:
    """A uint8 volume with EM-like texture (smooth blobs plus noise), written slab by slab."""
    array = zarr.create_array(path, shape=shape, chunks=(64, 64, 64), dtype="uint8")
    rng = np.random.default_rng(shape[0])
    for z in range(0, shape[0], 64):
        depth = min(64, shape[0] - z)
        coarse = rng.random((depth // 8 + 1, shape[1] // 8 + 1, shape[2] // 8 + 1), dtype=np.float32)
        smooth = coarse.repeat(8, 0).repeat(8, 1).repeat(8, 2)[:depth, :shape[1], :shape[2]]
        noise = rng.normal(0, 0.08, (depth, shape[1], shape[2])).astype(np.float32)
        array[z:z + depth] = np.clip((0.8 * smooth + noise) * 255, 0, 255).astype(np.uint8)
    return path


def _densepred(args: argparse.Namespace, config: Path, source: Path, out: Path) -> tuple[float, float, int]:
    command = [str(Path(sys.executable).with_name("densepred")), "predict", str(config), "--input", str(source),
               "--output", str(out), "--mirror", "--dtype", "uint8", "--device", args.device,
               "--precision", args.precision, "--quiet", "--overwrite"]
    if args.classes == 1:
        command += ["--classes", "1"]
    if args.levels:
        command += ["--levels", str(args.levels)]
    return _run(args, command + args.extra.split())


def _run(args: argparse.Namespace, command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, cores used and the child's peak RSS in bytes (the largest of the children so far)."""
    if args.cores is not None:
        command = ["taskset", "-c", args.cores, *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu / wall, after.ru_maxrss * 1024


if __name__ == "__main__":
    main()
