"""A zarr store read over HTTP beside the same store read from disk, predicted file to file.

Writes one EM-like uint8 volume (the texture of ``tiff_inputs.py``) as a zarr array (chunks of
64 x 256 x 256, zstd), serves its folder with Python's own HTTP server (``python -m
http.server``, on 127.0.0.1) and predicts it with the near-free 1x1x1 net of
``pipeline_ceiling.py`` into OME-Zarr (uint8, one level), where reading weighs the most: from
``http://127.0.0.1:PORT/v.zarr`` and from the folder, in turn, each run a fresh process; prints
each way's median seconds and peak resident set. The server shares this machine's cores.

    python benchmarks/http_inputs.py                      # 96 x 2048 x 2048, 3 rounds
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_ceiling import trivial_net
from tiff_inputs import compare, pages, volume_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    shape, rounds = volume_options(__doc__)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        array = zarr.create_array(work / "web" / "v.zarr", shape=shape, chunks=(64, 256, 256), dtype="uint8")
        for z, section in enumerate(pages(shape)):
            array[z] = section
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(work / "web")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            sources = {"http": f"http://127.0.0.1:{port}/v.zarr", "disk": work / "web" / "v.zarr"}
            compare(sources, trivial_net(work), work, shape, rounds)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
