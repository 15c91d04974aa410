"""Where a stream's time goes: the reader's, the computing thread's and the writers' functions,
each timed in-process over one `densepred predict --mode stream` of the near-free net.

The 1x1x1 net of ``pipeline_ceiling.py`` (two classes) predicts a uint8 zarr volume into
OME-Zarr with one level, as ``file_outputs.py`` does, in this process; each function below is
wrapped to add up its seconds over every thread that calls it. The writers' sums are over
all writer threads together, so they can exceed the run's wall time.

    python benchmarks/stream_threads.py                          # 256 x 1024 x 1024, uint8
    python benchmarks/stream_threads.py --dtype float32 --mode mfp
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import textured_volume, trivial_net

from densepred.interfaces.cli import main as cli
from densepred.running.compute import sink, tiles, transfers

SECONDS: dict[str, float] = collections.defaultdict(float)
LOCK = threading.Lock()


def timed(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with LOCK:
                SECONDS[label] += time.perf_counter() - start

    return wrapper


def instrument() -> None:
    """Wrap the reader's block reads, the engine's pushes and the writers' steps."""
    tiles.WindowRows.read = timed(tiles.WindowRows.read, "reader: window rows read")
    tiles.read_window = timed(tiles.read_window, "reader: tile windows read")
    stream = tiles.DenseEngine.stream
    tiles.DenseEngine.stream = lambda engine: timed(stream(engine), "compute: stream pushes")
    transfers.Download.numpy = timed(transfers.Download.numpy, "writers: finish (softmax)")
    sink.StreamRows.write = timed(sink.StreamRows.write, "writers: stream rows taken")
    sink.Sink.encode = timed(sink.Sink.encode, "writers: encode")
    sink.Sink.put = timed(sink.Sink.put, "writers: put (compress, store)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="256,1024,1024")
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--mode", default="stream")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config, source = trivial_net(work), textured_volume(work / "in.zarr", shape)
        instrument()
        start = time.perf_counter()
        code = cli(["predict", str(config), "--input", str(source), "--output", str(work / "o.zarr"), "--dtype",
                    args.dtype, "--levels", "1", "--mode", args.mode, "--quiet"])
        wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"the prediction failed with exit code {code}")
    print(f"{args.mode}, {'x'.join(map(str, shape))} -> OME-Zarr {args.dtype}: {wall:.2f} s wall")
    for label, seconds in sorted(SECONDS.items()):
        print(f"  {label:34s} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
