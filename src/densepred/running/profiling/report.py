"""The profile's results: rows, the table (``profile.csv``), the plot, and the config update."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...config import load_config, set_prediction_settings
from ...errors import DensePredError
from ...files import atomic_path, atomic_write_text
from ...progress import shape_text

PROFILE_MODES = ("mfp", "dilated", "naive", "stream")
CSV_COLUMNS = ("mode", "input_shape", "output_shape", "output_voxels", "seconds", "voxels_per_s",
               "peak_bytes", "useful_gflops", "fraction_of_peak", "status", "precision")


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
    precision: str = "float32"  # the engine's arithmetic; the matmul peak is measured in it too

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
        return [self.mode, shape_text(self.input_shape), shape_text(self.output_shape), str(self.output_voxels),
                f"{self.seconds:.6g}" if ok else "", f"{self.voxels_per_s:.6g}" if ok else "",
                str(self.peak_bytes) if self.peak_bytes else "", f"{self.useful_gflops:.6g}" if ok else "",
                f"{self.fraction_of_peak:.4f}" if ok else "", self.status, self.precision]


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
    precision: str = "float32"  # the walk's; a reduced one adds a float32 row on one of its tiles

    @property
    def best(self) -> ProfileRow | None:
        ok = [r for r in self.rows if r.status == "ok" and r.precision == self.precision]
        return max(ok, key=lambda r: r.voxels_per_s) if ok else None

    def against_float32(self) -> tuple[ProfileRow, ProfileRow] | None:
        """A reduced precision's row and the float32 row measured on the same tile, if any."""
        if self.precision == "float32":
            return None
        for other in self.rows:
            if other.precision == "float32" and other.status == "ok":
                same = [r for r in self.rows if r.precision == self.precision and r.status == "ok"
                        and (r.mode, r.input_shape) == (other.mode, other.input_shape)]
                if same:
                    return same[0], other
        return None

    def recommendation(self) -> str:
        best = self.best
        if best is None:
            return "no tile shape could be measured"
        text = (f"fastest: mode = \"{best.mode}\", tile_shape = {list(best.input_shape)} "
                f"({best.voxels_per_s:,.0f} voxels/s, {best.fraction_of_peak:.3f} of the matmul peak, "
                f"peak memory {best.peak_bytes / 2**30:.2f} GiB)")
        pair = self.against_float32()
        if pair is not None:
            reduced, full = pair
            verdict = ("faster" if reduced.voxels_per_s >= full.voxels_per_s else
                       "SLOWER: densepred predict refuses it for this network here until a profile finds it faster")
            text += (f"\n{self.precision} against float32 on {reduced.mode} {shape_text(reduced.input_shape)}: "
                     f"{reduced.voxels_per_s:,.0f} against {full.voxels_per_s:,.0f} voxels/s "
                     f"({reduced.voxels_per_s / full.voxels_per_s:.2f}x), {verdict}")
        return text


def check_measure_budget(max_seconds: object, repeats: object) -> None:
    """A profile's time budget and repeats (NumPy scalars too), refused in one line if wrong."""
    seconds, count = _plain(max_seconds), _plain(repeats)
    if (isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < math.inf
            or isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise DensePredError(f"max_seconds = {max_seconds!r}, repeats = {repeats!r}: max_seconds must be a positive "
                             "number of seconds and repeats a whole number of at least 1")


def check_out_folder(folder: str | Path | None) -> None:
    """The folder a profile writes its table (and plot) to, refused before the measuring starts
    (a walk takes minutes) if it cannot be made or written; None: nothing is written."""
    if folder is None:
        return
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise DensePredError(f"cannot write the profile to {folder}: {existing} is a file; name a folder "
                             "(--out, out=)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DensePredError(f"cannot write the profile to {folder}: no permission to write in {existing}")


def _plain(value: object) -> object:
    """A NumPy scalar as the Python number it holds."""
    return value.item() if isinstance(value, np.generic) else value


def save_profile(result: ProfileResult, folder: str | Path, name: str = "") -> tuple[Path, Path]:
    """Write ``profile.csv`` and ``profile.png`` into ``folder``; return their paths."""
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
    from matplotlib.figure import Figure  # not pyplot: the caller's backend and figures stay as they are

    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.subplots()
    for mode in PROFILE_MODES:
        rows = [r for r in result.rows if r.mode == mode and r.status == "ok" and r.precision == result.precision]
        if rows:
            ax.plot([r.output_voxels for r in rows], [r.voxels_per_s for r in rows], "o-", label=mode)
    pair = result.against_float32()
    if pair is not None:
        ax.plot([pair[1].output_voxels], [pair[1].voxels_per_s], "x", color="black", markersize=10,
                label=f"float32, {pair[1].mode} {shape_text(pair[1].input_shape)}")
    best = result.best
    if best is not None:
        ax.plot([best.output_voxels], [best.voxels_per_s], "*", color="black", markersize=16,
                label=f"fastest: {best.mode} {shape_text(best.input_shape)}")
    ax.set_xscale("log")
    ax.set_xlabel("output voxels per tile")
    ax.set_ylabel("output voxels / s")
    ax.set_title(f"{name} on {result.device}, {result.precision}: matmul peak {result.matmul_flops / 1e9:.0f} "
                 "GFLOP/s".strip())
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def write_prediction_settings(path: str | Path, tile_shape: Sequence[int], mode: str) -> None:
    """Set ``[prediction] tile_shape`` and ``mode`` in a config file, keeping everything else
    (comments, layout, the file's permissions); the result is checked with :func:`load_config`
    before it replaces the file."""
    path = Path(path)
    updated = set_prediction_settings(path.read_text(encoding="utf-8"), tile_shape, mode)
    check = path.with_name(f".{path.name}.check.toml")
    check.write_text(updated, encoding="utf-8")
    try:
        loaded = load_config(check).prediction
    finally:
        check.unlink(missing_ok=True)
    if loaded.tile_shape != tuple(tile_shape) or loaded.mode != mode:
        raise DensePredError(f"could not store tile_shape and mode in {path}: the edited file reads back as "
                             f"tile_shape = {loaded.tile_shape}, mode = {loaded.mode!r}")
    atomic_write_text(path, updated)


