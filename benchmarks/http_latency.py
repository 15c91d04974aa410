"""Reading over HTTP when each request waits: a volume in a bucket, predicted file to file.

An object store answers each request after a wait (tens of milliseconds from a cloud machine,
more from a lab), so a reader that asks for one chunk after another spends the run waiting.
This writes one EM-like uint8 volume as a zarr array, a neuroglancer precomputed volume
(unsharded, raw) and an N5 dataset, all in chunks of 64 x 64 x 64, serves them from a process
of its own that answers each request after ``--latency`` milliseconds (a threaded server,
byte ranges not needed: every chunk is a file), and predicts each with the near-free 1x1x1 net
of ``pipeline_ceiling.py`` into OME-Zarr (uint8, one class, one level), each run a fresh
process; prints each source's median seconds and voxels per second, and the same volume from
disk.

    python benchmarks/http_latency.py                           # 64 x 1024 x 1024, 40 ms, 3 rounds
    python benchmarks/http_latency.py --latency 100 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import trivial_net
from tiff_inputs import pages

CHUNK = 64
SERVER = r"""
import functools, http.server, sys, time
class Waiting(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        time.sleep(float(sys.argv[3]))
        return super().send_head()
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256
Server(("127.0.0.1", int(sys.argv[1])), functools.partial(Waiting, directory=sys.argv[2])).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_sources(web: Path, shape: tuple[int, ...]) -> None:
    """The same volume as zarr (``v.zarr``), precomputed (``pc``) and N5 (``c.n5/em``)."""
    volume = np.stack(list(pages(shape)))
    zarr.create_array(web / "v.zarr", shape=shape, chunks=(CHUNK,) * 3, dtype="uint8")[:] = volume
    scale = web / "pc" / "1_1_1"
    scale.mkdir(parents=True)
    size = list(reversed(shape))  # x, y, z
    (web / "pc" / "info").write_text(json.dumps({
        "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8", "num_channels": 1,
        "scales": [{"key": "1_1_1", "size": size, "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
                    "chunk_sizes": [[CHUNK] * 3], "encoding": "raw"}]}))
    dataset = web / "c.n5" / "em"
    dataset.mkdir(parents=True)
    (web / "c.n5" / "attributes.json").write_text('{"n5": "2.5.1"}')
    (dataset / "attributes.json").write_text(json.dumps({"dimensions": size, "blockSize": [CHUNK] * 3,
                                                         "dataType": "uint8", "compression": {"type": "raw"}}))
    for z in range(0, shape[0], CHUNK):
        for y in range(0, shape[1], CHUNK):
            for x in range(0, shape[2], CHUNK):
                block = volume[z:z + CHUNK, y:y + CHUNK, x:x + CHUNK]
                name = f"{x}-{x + block.shape[2]}_{y}-{y + block.shape[1]}_{z}-{z + block.shape[0]}"
                (scale / name).write_bytes(block.tobytes())
                where = dataset / str(x // CHUNK) / str(y // CHUNK)
                where.mkdir(parents=True, exist_ok=True)
                header = np.array([0, 3], ">u2").tobytes() + np.array(block.shape[::-1], ">u4").tobytes()
                (where / str(z // CHUNK)).write_bytes(header + block.tobytes())


def seconds(config: Path, source: str, output: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "densepred", "predict", str(config), "--input", source, "--output",
                    str(output), "--dtype", "uint8", "--classes", "1", "--levels", "1", "--overwrite", "--quiet"],
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,1024,1024")
    parser.add_argument("--latency", type=float, default=40.0, help="milliseconds before each answer")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        write_sources(work / "web", shape)
        config = trivial_net(work)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(work / "web"),
                                   str(args.latency / 1000)])
        try:
            time.sleep(1.0)
            url = f"http://127.0.0.1:{port}"
            sources = {"zarr, disk": str(work / "web" / "v.zarr"), "zarr, http": f"{url}/v.zarr",
                       "precomputed, http": f"precomputed://{url}/pc", "n5, http": f"{url}/c.n5:em"}
            runs: dict[str, list[float]] = {name: [] for name in sources}
            for _ in range(args.rounds):
                for name, source in sources.items():
                    runs[name].append(seconds(config, source, work / "o.zarr"))
        finally:
            server.terminate()
            server.wait()
    chunks = int(np.prod([-(-n // CHUNK) for n in shape]))
    print(f"volume {'x'.join(map(str, shape))} uint8, {chunks} chunks of {CHUNK}^3; {args.latency:g} ms per request")
    for name, times in runs.items():
        median = statistics.median(times)
        print(f"  {name:18s} {median:6.2f} s  {np.prod(shape) / median / 1e6:6.1f} Mvox/s  (runs "
              f"{' '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
