"""The measuring process: it owns the network and measures one tile shape per request.

A separate process gives a clean peak-memory figure (on the CPU the peak resident set, reset
between shapes through ``/proc/self/clear_refs``; on CUDA the allocator's peak) and keeps the
profiler alive if the kernel's OOM killer strikes anyway. It is started as a fresh
``python -c`` that calls :func:`serve` (not with multiprocessing's spawn, which re-runs the
caller's script), so a plain script that calls :func:`densepred.profile` needs no
``if __name__ == "__main__":`` guard. Requests and replies travel over a socket pair as
multiprocessing connection messages between these two trusted processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from ...config import Config, network_geometry
from ...errors import DensePredError
from ...networks.caller_state import generator
from ...system import available_ram, proc_values, release_free_memory, reset_peak_resident
from .report import ProfileRow
from .walk import repeats_for

# after serving, the process ends at once: the interpreter's teardown of torch took 0.7-0.9 s of each profile
WORKER_MAIN = ("import os, sys; from multiprocessing.connection import Connection; "
               "from densepred.running.profiling.worker import serve; serve(Connection(int(sys.argv[1]))); "
               "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)")
CPU_MEMORY_MARGIN = 0.8  # of the available memory at the start
CUDA_MEMORY_MARGIN = 0.9  # of the free GPU memory at the start


class Worker:
    """The parent's handle on the measuring process."""

    def __init__(self, cfg: Config, device: str, precision: str = "float32"):
        self.cfg, self.device, self.precision = cfg, device, precision
        self.flops_per_voxel = network_geometry(cfg.network).flops_per_voxel
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._process = subprocess.Popen(
            [sys.executable, "-c", WORKER_MAIN, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((self.cfg, self.device, self.precision))
        hello = self._receive()
        if hello is None:
            raise DensePredError(f"the measuring process for device {self.device} exited while starting "
                                 f"(exit code {self._process.returncode}; its messages are above)")
        if "error" in hello:
            raise DensePredError(hello["error"])
        self.matmul_flops = hello["matmul_flops"]
        self.baseline = hello["baseline"]
        self.default_limit = hello["default_limit"]

    def measure(self, mode: str, input_shape: tuple[int, ...], output: tuple[int, ...], estimate: int,
                repeats: int) -> ProfileRow:
        start = time.monotonic()
        self._conn.send((mode, input_shape, repeats))
        reply = self._receive()
        wall = time.monotonic() - start
        common = {"mode": mode, "input_shape": input_shape, "output_shape": output, "estimated_bytes": estimate,
                  "useful_flops_per_voxel": self.flops_per_voxel, "matmul_flops": self.matmul_flops,
                  "wall_seconds": wall, "precision": self.precision}
        if reply is None:
            return ProfileRow(seconds=0.0, peak_bytes=0, status="oom", **common)
        if "error" in reply:
            raise DensePredError(reply["error"])
        return ProfileRow(seconds=reply["seconds"], peak_bytes=reply["peak_bytes"], status=reply["status"], **common)

    def restart_if_dead(self) -> None:
        if self._process.poll() is not None:
            self._conn.close()
            self._start()

    def _receive(self) -> dict[str, Any] | None:
        try:
            return self._conn.recv()
        except (EOFError, ConnectionError):
            self._process.wait()
            return None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()


def serve(conn: Connection) -> None:
    """The measuring process's loop: set up the net, then answer one request per shape."""
    from ...networks import DenseEngine, build_net
    from ...networks.precision import precision_for

    cfg, device_name, precision_name = conn.recv()
    try:
        device = torch.device(device_name)
        precision = precision_for(precision_name, device)
        torch.manual_seed(0)
        net = build_net(cfg).eval()
        engines: dict[str, Any] = {}
        flops = matmul_peak(device, precision=precision)
        release_free_memory()  # the matmul's matrices are not the baseline of a tile
        conn.send({"matmul_flops": flops, "baseline": _memory_now(device),
                   "default_limit": _default_limit(device)})
    except Exception as exc:  # reported to the parent as one message
        conn.send({"error": f"could not set up the network on {device_name}: {exc}"})
        return
    while (request := conn.recv()) is not None:
        mode, input_shape, repeats = request
        if mode not in engines:
            engines.clear()  # one engine at a time keeps the memory figure to one mode
            engines[mode] = DenseEngine(net, mode, device, precision)
        conn.send(_measure(engines[mode], cfg.network.in_channels, input_shape, repeats, device))


def _measure(engine: Any, channels: int, input_shape: tuple[int, ...], repeats: int, device: Any) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    try:
        _reset_peak(device)
        x = torch.rand((1, channels, *input_shape), generator=generator)
        warm = _timed(engine, x, device)
        times = [_timed(engine, x, device) for _ in range(repeats_for(warm, repeats))]
        peak = _peak_memory(device)
        del x
        return {"seconds": statistics.median(times), "peak_bytes": peak, "status": "ok"}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"seconds": 0.0, "peak_bytes": _peak_memory(device), "status": "oom"}
    except RuntimeError as exc:
        if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
            return {"seconds": 0.0, "peak_bytes": _peak_memory(device), "status": "oom"}
        raise


def _timed(engine: Any, x: Any, device: Any) -> float:
    _sync(device)
    start = time.perf_counter()
    torch.softmax(engine(x), dim=1).cpu()  # real runs copy the probabilities to the host too
    _sync(device)
    return time.perf_counter() - start


def matmul_peak(device: Any, n: int | None = None, repeats: int = 5, precision: Any = None) -> float:
    """Best FLOP/s of an ``n x n`` matrix product on ``device`` in ``precision`` (default
    float32); ``n`` defaults to ``DENSEPRED_PEAK_MATRIX`` or 4096 (a smaller one measures faster
    and lower)."""
    from ...networks.precision import FLOAT32, precision_flags

    precision = precision or FLOAT32
    n = n or int(os.environ.get("DENSEPRED_PEAK_MATRIX", "4096"))
    a = torch.randn(n, n, generator=generator(1)).to(device, precision.dtype)
    b = torch.randn(n, n, generator=generator(2)).to(device, precision.dtype)
    best = math.inf
    with precision_flags(precision):
        a @ b
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    release_free_memory()  # what the previous shape left in malloc's free lists is not this shape's
    reset_peak_resident()


def _peak_memory(device: Any) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    status = proc_values()
    if "VmHWM" in status:
        return status["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_now(device: Any) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return proc_values().get("VmRSS", 0)


def _default_limit(device: Any) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_MARGIN)
    return int(available_ram() * CPU_MEMORY_MARGIN) + _memory_now(device)
