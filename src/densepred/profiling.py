"""Find the fastest tile: measure dense-prediction speed against tile size up to the memory limit.

ELEKTRONN's ``elektronn-profile`` grew the input until memory ran out and timed one call per
size. Here each mode walks valid tile shapes from small to large with the aspect of the
training patch. Every shape gets a warm-up and then repeats (median time), and its peak
memory is *measured*: on the CPU as the peak resident memory of a worker process (reset
between shapes through ``/proc/self/clear_refs``), on CUDA as the allocator's peak.

Before a shape runs, its peak is predicted from the measured baseline of the worker plus the
activation estimate (:func:`densepred.tiling.tile_bytes`), scaled by how far the previous
measurement exceeded its estimate; a mode stops growing when the prediction passes the
memory limit, so the machine never swaps or meets the kernel's OOM killer. A CUDA
out-of-memory error, or a worker killed anyway, becomes a row with status ``oom``.

Speed is reported as output voxels/s and as useful FLOP/s over the peak of a large matrix
product measured in the same worker (DESIGN §7), so a fraction means the same on any machine.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import DensePredError
from .geometry import Geometry
from .tiling import tile_bytes

log = logging.getLogger("densepred")

PROFILE_MODES = ("mfp", "dilated", "naive")
CSV_COLUMNS = ("mode", "input_shape", "output_shape", "output_voxels", "seconds", "voxels_per_s",
               "peak_bytes", "useful_gflops", "fraction_of_peak", "status")
CPU_MEMORY_MARGIN = 0.8  # of MemAvailable at the start
CUDA_MEMORY_MARGIN = 0.9  # of the free GPU memory at the start
GROWTH = 1.35  # each shape has at least this many times the output voxels of the one before
SHAPE_SECONDS = 20.0  # repeats of one shape stop adding up after about this long
MAX_SHAPES = 60
JUMP = 8  # a jump over shapes (to stay in the time budget) grows the tile at most this much
CALIBRATE_BYTES = 64 * 2**20  # estimates from which a measured peak recalibrates the next prediction


@dataclass(frozen=True)
class ProfileRow:
    """One measured (or failed) tile shape."""

    mode: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    seconds: float
    peak_bytes: int
    estimated_bytes: int
    useful_flops_per_voxel: int
    matmul_flops: float
    status: str = "ok"
    wall_seconds: float = 0.0  # the whole measurement: input, warm-up, repeats

    @property
    def output_voxels(self) -> int:
        return math.prod(self.output_shape)

    @property
    def voxels_per_s(self) -> float:
        return self.output_voxels / self.seconds if self.status == "ok" else 0.0

    @property
    def useful_gflops(self) -> float:
        return self.voxels_per_s * self.useful_flops_per_voxel / 1e9

    @property
    def fraction_of_peak(self) -> float:
        return self.useful_gflops * 1e9 / self.matmul_flops if self.matmul_flops else 0.0

    def csv_values(self) -> list[str]:
        ok = self.status == "ok"
        return [self.mode, _x(self.input_shape), _x(self.output_shape), str(self.output_voxels),
                f"{self.seconds:.6g}" if ok else "", f"{self.voxels_per_s:.6g}" if ok else "",
                str(self.peak_bytes) if self.peak_bytes else "", f"{self.useful_gflops:.6g}" if ok else "",
                f"{self.fraction_of_peak:.4f}" if ok else "", self.status]


@dataclass
class ProfileResult:
    """All rows, the fastest one, and where the table and plot went."""

    rows: list[ProfileRow]
    matmul_flops: float
    device: str
    memory_limit: int
    baseline: int  # memory of the measuring process before any tile
    csv_path: Path | None = None
    png_path: Path | None = None
    stops: list[str] = field(default_factory=list)

    @property
    def best(self) -> ProfileRow | None:
        ok = [r for r in self.rows if r.status == "ok"]
        return max(ok, key=lambda r: r.voxels_per_s) if ok else None

    def recommendation(self) -> str:
        best = self.best
        if best is None:
            return "no tile shape could be measured"
        return (f"fastest: mode = \"{best.mode}\", tile_shape = {list(best.input_shape)} "
                f"({best.voxels_per_s:,.0f} voxels/s, {best.fraction_of_peak:.3f} of the matmul peak, "
                f"peak memory {best.peak_bytes / 2**30:.2f} GiB)")


def profile(config: Config | str | Path, *, device: str | None = None,
            modes: Sequence[str] = ("mfp", "dilated"), memory_limit: int | None = None,
            max_seconds: float = 600.0, out: str | Path | None = None, write: bool = False,
            aspect: Sequence[float] | None = None, repeats: int = 3, progress: bool = True) -> ProfileResult:
    """Measure speed against tile size for each mode and return (and save) the table.

    Args:
        config: the network's config, or its path. ``--write`` needs a path.
        device: ``"cpu"`` or ``"cuda:N"``; default CUDA when available.
        modes: engines to profile (``mfp``, ``dilated``, ``naive``).
        memory_limit: bytes the measuring process may use at its peak; default 80% of the RAM
            available now (CPU) or 90% of the free GPU memory.
        max_seconds: time budget for the whole profile; a shape whose predicted time would pass
            it is not started.
        out: folder for ``profile.csv`` and ``profile.png``; default the config's save dir;
            ``None`` with an in-memory config writes nothing.
        write: store the fastest tile as ``[prediction] tile_shape`` and ``mode`` in the config file.
        aspect: relative tile extent per axis (z, y, x); default the training patch's aspect.
        repeats: timed runs per shape after the warm-up (fewer for shapes slower than ~20 s).
        progress: show which shape is running.

    Example:
        >>> result = densepred.profile("examples/m36.toml", max_seconds=300)   # doctest: +SKIP
        >>> result.best.input_shape, result.best.mode                          # doctest: +SKIP
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    if cfg.network.dims == 0:
        raise DensePredError("networks with dims = 0 classify feature vectors; there is no tile to profile")
    modes = _check_modes(modes)
    if write and cfg.path is None:
        raise DensePredError("write=True needs a config loaded from a file")
    if max_seconds <= 0 or repeats < 1:
        raise DensePredError("max_seconds must be positive and repeats at least 1")
    started = time.monotonic()
    geometry = Geometry.from_config(cfg.network)
    ratio = _aspect(cfg, geometry, aspect)
    device = _device_name(device)
    with _Worker(cfg, device) as worker:
        limit = memory_limit if memory_limit is not None else worker.default_limit
        result = ProfileResult([], worker.matmul_flops, device, limit, worker.baseline)
        deadline = started + max_seconds
        _walk(worker, geometry, modes, ratio, limit, deadline, repeats, progress, result)
    folder = Path(out) if out is not None else cfg.save_dir
    if folder is not None:
        result.csv_path, result.png_path = save_profile(result, folder, cfg.name)
    if write and result.best is not None:
        write_prediction_settings(cfg.path, result.best.input_shape, result.best.mode)
    return result


# -- the walk -------------------------------------------------------------------------------

def tile_walk(geometry: Geometry, aspect: Sequence[float], modes: Sequence[str], limit_bytes: int,
              growth: float = GROWTH) -> list[tuple[int, ...]]:
    """Output tiles from the smallest to the last whose activation estimate, for some mode,
    fits ``limit_bytes``.

    Each is a multiple of the stride on every axis (so its input is MFP-valid), follows
    ``aspect`` and has at least ``growth`` times the voxels of the one before.
    """
    shapes: list[tuple[int, ...]] = []
    side = 1.0
    while len(shapes) < MAX_SHAPES:
        shape = tuple(max(t, t * round(side * a / t)) for t, a in zip(geometry.stride, aspect, strict=True))
        side *= 1.02
        if shapes and math.prod(shape) < growth * math.prod(shapes[-1]):
            continue
        if all(tile_bytes(geometry, shape, m) > limit_bytes for m in modes):
            break
        shapes.append(shape)
    return shapes


class _Walk:
    """Which shape and modes come next, given the memory limit, the time left and what was measured."""

    def __init__(self, geometry: Geometry, modes: Sequence[str], shapes: list[tuple[int, ...]], limit: int,
                 baseline: int, repeats: int):
        self.geometry, self.shapes, self.limit, self.baseline = geometry, shapes, limit, baseline
        self.repeats = repeats
        self.active = list(modes)
        self.last: dict[str, ProfileRow] = {}
        self.stops: list[str] = []

    def fits(self, mode: str, index: int) -> bool:
        return self.predicted_peak(mode, index) <= self.limit

    def predicted_peak(self, mode: str, index: int) -> int:
        estimate = tile_bytes(self.geometry, self.shapes[index], mode)
        return _predict_peak(self.baseline, estimate, self.last.get(mode))

    def seconds(self, mode: str, index: int) -> float:
        """Predicted time of a whole measurement (warm-up, repeats, overhead), scaled by FLOPs from
        the mode's last one."""
        previous = self.last.get(mode)
        if previous is None:
            return 0.0
        input_shape = self.geometry.input_shape_for(self.shapes[index])
        ratio = self.geometry.flops(input_shape, mode) / self.geometry.flops(previous.input_shape, mode)
        runs_before = 1 + _repeats_for(previous.seconds, self.repeats)
        runs = 1 + _repeats_for(previous.seconds * ratio, self.repeats)
        return previous.wall_seconds * ratio * runs / runs_before

    def cost(self, index: int) -> float:
        return sum(self.seconds(m, index) for m in self.active if self.fits(m, index))

    def next_index(self, index: int, seconds_left: float) -> int | None:
        """The next shape: the following one while the whole rest of the walk fits the time left.

        Otherwise a jump, of at most ``JUMP`` times the voxels, to the largest shape that costs
        at most a third of the time left (so points remain between here and the end), else to
        the largest shape still affordable at all.
        """
        later = [j for j in range(index + 1, len(self.shapes)) if any(self.fits(m, j) for m in self.active)]
        if not later:
            return None
        if sum(self.cost(j) for j in later) <= seconds_left:
            return later[0]
        near = [j for j in later if math.prod(self.shapes[j]) <= JUMP * math.prod(self.shapes[index])]
        for candidates, share in ((near, 3), (later, 1)):
            affordable = [j for j in candidates if self.cost(j) <= seconds_left / share]
            if affordable:
                return max(affordable)
        return None

    def stop(self, mode: str, why: str) -> None:
        self.active.remove(mode)
        self.stops.append(f"{mode}: {why}")


def _walk(worker: _Worker, geometry: Geometry, modes: Sequence[str], aspect: Sequence[float],
          limit: int, deadline: float, repeats: int, progress: bool, result: ProfileResult) -> None:
    """Shapes in increasing size, all modes at each size, until memory or time runs out."""
    shapes = tile_walk(geometry, aspect, modes, max(limit - worker.baseline, 0))
    walk = _Walk(geometry, modes, shapes, limit, worker.baseline, repeats)
    bar = _bar(progress, len(shapes))
    index: int | None = 0 if shapes else None
    if index is None:
        result.stops.append("even the smallest tile is estimated to exceed the memory limit")
    while index is not None and walk.active:
        input_shape = geometry.input_shape_for(shapes[index])
        for mode in list(walk.active):
            if not walk.fits(mode, index):
                walk.stop(mode, f"{_x(input_shape)} would need about {walk.predicted_peak(mode, index) / 2**30:.2f}"
                                f" GiB, over the limit of {limit / 2**30:.2f} GiB")
                continue
            if bar is not None:
                bar.set_description(f"{mode} {_x(input_shape)}")
            row = worker.measure(mode, input_shape, shapes[index], tile_bytes(geometry, shapes[index], mode),
                                 repeats)
            result.rows.append(row)
            if row.status != "ok":
                walk.stop(mode, f"{_x(input_shape)} ran out of memory")
                worker.restart_if_dead()
                continue
            walk.last[mode] = row
        seconds_left = deadline - time.monotonic()
        following = walk.next_index(index, seconds_left)
        if bar is not None:
            bar.update((len(shapes) if following is None else following) - index)
        if following is None and walk.active:
            walk.stops.append(_why_stopped(walk, geometry, index, seconds_left, limit))
        index = following
    result.stops.extend(walk.stops)
    if bar is not None:
        bar.close()


def _why_stopped(walk: _Walk, geometry: Geometry, index: int, seconds_left: float, limit: int) -> str:
    """Why the walk ends after ``index``: memory (no larger shape fits any mode) or time."""
    following = index + 1
    if following < len(walk.shapes) and any(walk.fits(m, following) for m in walk.active):
        return (f"at the time budget: {_x(geometry.input_shape_for(walk.shapes[following]))} and larger would "
                f"not finish in the {max(seconds_left, 0):.0f} s left")
    if following < len(walk.shapes):
        peak = min(walk.predicted_peak(m, following) for m in walk.active)
        return (f"at the memory limit: {_x(geometry.input_shape_for(walk.shapes[following]))} would need about "
                f"{peak / 2**30:.2f} GiB, over the limit of {limit / 2**30:.2f} GiB")
    return "at the memory limit: the next shape's activation estimate exceeds it"


def _predict_peak(baseline: int, estimate: int, previous: ProfileRow | None) -> int:
    """The next shape's peak: the baseline plus the estimate, or the previous measured peak plus
    the growth of the estimate, whichever is larger; both scaled up if the last sizeable
    measurement exceeded its own estimate (below ``CALIBRATE_BYTES`` the allocator's granularity
    dominates the figure)."""
    if previous is None or not previous.peak_bytes:
        return baseline + estimate
    scale = 1.0
    if previous.estimated_bytes >= CALIBRATE_BYTES:
        scale = max(1.0, (previous.peak_bytes - baseline) / previous.estimated_bytes)
    from_previous = previous.peak_bytes + scale * max(estimate - previous.estimated_bytes, 0)
    return int(max(baseline + scale * estimate, from_previous))


def _repeats_for(seconds: float, repeats: int) -> int:
    return max(1, min(repeats, int(SHAPE_SECONDS / max(seconds, 1e-9))))


# -- the measuring worker ------------------------------------------------------------------

class _Worker:
    """A child process that owns the network and measures one shape per request.

    A separate process gives a clean peak-memory figure and keeps the profiler alive if the
    kernel's OOM killer strikes anyway.
    """

    def __init__(self, cfg: Config, device: str):
        self.cfg, self.device = cfg, device
        self.flops_per_voxel = Geometry.from_config(cfg.network).flops_per_voxel
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker_main, args=(child, self.cfg, self.device),
                                              daemon=True)
        self._process.start()
        child.close()
        hello = self._receive()
        if hello is None:
            raise DensePredError(f"the measuring process for device {self.device} exited while starting")
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
        common = dict(mode=mode, input_shape=input_shape, output_shape=output, estimated_bytes=estimate,
                      useful_flops_per_voxel=self.flops_per_voxel,
                      matmul_flops=self.matmul_flops, wall_seconds=wall)
        if reply is None:
            return ProfileRow(seconds=0.0, peak_bytes=0, status="oom", **common)
        if "error" in reply:
            raise DensePredError(reply["error"])
        return ProfileRow(seconds=reply["seconds"], peak_bytes=reply["peak_bytes"], status=reply["status"], **common)

    def restart_if_dead(self) -> None:
        if not self._process.is_alive():
            self._start()

    def _receive(self) -> dict[str, Any] | None:
        try:
            return self._conn.recv()
        except (EOFError, ConnectionError):
            self._process.join()
            return None

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


def _worker_main(conn: Any, cfg: Config, device_name: str) -> None:
    import torch

    from .engines import DenseEngine
    from .network import build_net

    try:
        device = torch.device(device_name)
        torch.manual_seed(0)
        net = build_net(cfg).eval()
        engines = {}
        flops = matmul_peak(device)
        conn.send({"matmul_flops": flops, "baseline": _memory_now(device),
                   "default_limit": _default_limit(device)})
    except Exception as exc:  # reported to the parent as one message
        conn.send({"error": f"could not set up the network on {device_name}: {exc}"})
        return
    while (request := conn.recv()) is not None:
        mode, input_shape, repeats = request
        if mode not in engines:
            engines.clear()  # one engine at a time keeps the memory figure to one mode
            engines[mode] = DenseEngine(net, mode, device)
        conn.send(_measure(engines[mode], cfg.network.in_channels, input_shape, repeats, device))


def _measure(engine: Any, channels: int, input_shape: tuple[int, ...], repeats: int, device: Any) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(1)
    try:
        _reset_peak(device)
        x = torch.rand((1, channels, *input_shape), generator=generator)
        warm = _timed(engine, x, device)
        times = [_timed(engine, x, device) for _ in range(_repeats_for(warm, repeats))]
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
    import torch

    _sync(device)
    start = time.perf_counter()
    torch.softmax(engine(x), dim=1)
    _sync(device)
    return time.perf_counter() - start


def matmul_peak(device: Any, n: int = 4096, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an ``n x n`` matrix product on ``device``."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    from .runtime import release_free_memory

    release_free_memory()  # what the previous shape left in malloc's free lists is not this shape's
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current one
    except OSError:
        pass


def _peak_memory(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_now(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status().get("VmRSS", 0)


def _proc_status() -> dict[str, int]:
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _default_limit(device: Any) -> int:
    import torch

    from .predict import _available_ram

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_MARGIN)
    return int(_available_ram() * CPU_MEMORY_MARGIN) + _memory_now(device)


# -- output ---------------------------------------------------------------------------------

def save_profile(result: ProfileResult, folder: str | Path, name: str = "") -> tuple[Path, Path]:
    """Write ``profile.csv`` and ``profile.png`` into ``folder``; return their paths."""
    from .weights import atomic_write_text

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DensePredError(f"cannot create the output folder {folder}: {exc.strerror}") from None
    csv_path, png_path = folder / "profile.csv", folder / "profile.png"
    atomic_write_text(csv_path, profile_csv(result.rows))
    plot_profile(result, png_path, name)
    return csv_path, png_path


def profile_csv(rows: Sequence[ProfileRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(row.csv_values() for row in rows)
    return buffer.getvalue()


def plot_profile(result: ProfileResult, path: Path, name: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in PROFILE_MODES:
        rows = [r for r in result.rows if r.mode == mode and r.status == "ok"]
        if rows:
            ax.plot([r.output_voxels for r in rows], [r.voxels_per_s for r in rows], "o-", label=mode)
    best = result.best
    if best is not None:
        ax.plot([best.output_voxels], [best.voxels_per_s], "*", color="black", markersize=16,
                label=f"fastest: {best.mode} {_x(best.input_shape)}")
    ax.set_xscale("log")
    ax.set_xlabel("output voxels per tile")
    ax.set_ylabel("output voxels / s")
    ax.set_title(f"{name} on {result.device}: matmul peak {result.matmul_flops / 1e9:.0f} GFLOP/s".strip())
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_prediction_settings(path: str | Path, tile_shape: Sequence[int], mode: str) -> None:
    """Set ``[prediction] tile_shape`` and ``mode`` in a config file, keeping everything else
    (comments included); the result is checked with :func:`load_config` before it replaces the file."""
    from .weights import atomic_write_text

    path = Path(path)
    text = path.read_text()
    updated = set_prediction_keys(text, {"tile_shape": list(tile_shape), "mode": mode})
    check = path.with_name(f".{path.name}.check.toml")
    check.write_text(updated)
    try:
        loaded = load_config(check).prediction
    finally:
        check.unlink(missing_ok=True)
    assert loaded.tile_shape == tuple(tile_shape) and loaded.mode == mode
    atomic_write_text(path, updated)


def set_prediction_keys(text: str, values: dict[str, Any]) -> str:
    """TOML text with ``values`` set in its ``[prediction]`` table (added at the end if missing)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    source = text.splitlines()
    header = next((i for i, line in enumerate(source) if line.strip() == "[prediction]"), None)
    if header is None:
        return text.rstrip("\n") + "\n\n[prediction]\n" + "\n".join(lines) + "\n"
    end = next((i for i in range(header + 1, len(source)) if source[i].lstrip().startswith("[")), len(source))
    body = [line for line in source[header + 1:end]
            if line.split("=", 1)[0].strip() not in values or "=" not in line]
    return "\n".join(source[:header + 1] + lines + body + source[end:]) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return "[" + ", ".join(str(v) for v in value) + "]"


# -- small helpers --------------------------------------------------------------------------

def _check_modes(modes: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in PROFILE_MODES]
    if bad or not modes:
        raise DensePredError(f"modes {list(modes)} are invalid; choose from {', '.join(PROFILE_MODES)}")
    return tuple(dict.fromkeys(modes))


def _aspect(cfg: Config, geometry: Geometry, aspect: Sequence[float] | None) -> tuple[float, ...]:
    """Relative extent per axis, largest 1: given, else the config's patch or tile, else cubic."""
    if aspect is None:
        patch = cfg.network.patch_size or (cfg.training.patch_size if cfg.training else None) \
            or cfg.prediction.tile_shape
        aspect = patch if patch is not None else (1,) * geometry.ndim
    values = tuple(float(a) for a in aspect)
    if len(values) != geometry.ndim or not all(a > 0 for a in values):
        raise DensePredError(f"aspect {list(aspect)} is invalid; expected {geometry.ndim} positive numbers (z, y, x)")
    largest = max(values)
    return tuple(a / largest for a in values)


def _device_name(device: str | None) -> str:
    from .predict import resolve_device

    return str(resolve_device(device))


def _bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shape", desc="profile")


def _x(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)
