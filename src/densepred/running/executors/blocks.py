"""What a cluster worker runs: one block of output tiles, or one shard of a pyramid level.

A task carries everything it needs by value (the config, the weights' bytes, the tile plan),
so a worker on another node needs only the input and output on storage it can see. Each
worker process builds the net once per (network, weights, device) and reuses it for all its
blocks. A block reads its own input window and halo from storage, writes whole output shards
and makes them durable before it returns, so running it twice writes the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import Config
from ...errors import DensePredError
from ...geometry import BlockPlan, TilePlan
from ...io import ArraySpec, ChannelFirst, open_array, open_output
from ...io.encoding import Encoding
from ...io.pyramid import write_level_block
from ...networks import create_prediction_net
from ...networks.devices import resolve_device
from ...system import available_cores
from ..compute.sink import NonFinite, Sink, tile_writes
from ..compute.tiles import make_engine, predict_tiles
from ..planning.tiling import writer_threads

_NETS: dict[tuple[str, str], Any] = {}
_NETS_LOCK = threading.Lock()


@dataclass(frozen=True)
class NetPayload:
    """A network by value: its config and the bytes of its safetensors weights."""

    config: Config
    weights: bytes
    key: str = field(default="")  # sha256 of the weights and the config, the per-worker cache key

    @classmethod
    def from_files(cls, config: Config, weights: Path) -> NetPayload:
        """The payload; its key covers everything that shapes the net's numbers: the weights and
        the whole config (a later run on the same cluster with another activation, say, must not
        reuse this net)."""
        data = Path(weights).read_bytes()
        digest = hashlib.sha256(data)
        digest.update(json.dumps(config.source, sort_keys=True, default=str).encode())
        return cls(config, data, digest.hexdigest())


@dataclass(frozen=True)
class BlockJob:
    """What every block of one prediction shares."""

    input: ArraySpec
    output: ArraySpec
    in_channels: int
    ndim: int  # the net's spatial dimensions
    plan: TilePlan
    blocks: BlockPlan
    engine_mode: str
    batch_size: int
    encoding: Encoding
    device: str | None
    shift: tuple[int, ...]  # output voxel -> image voxel, for messages
    strict: bool = False
    threads: int | None = None  # torch threads per worker; default the worker's cores / its task slots
    precision: str = "float32"  # the engine's arithmetic (:mod:`densepred.networks.precision`)


@dataclass(frozen=True)
class BlockResult:
    block_id: int
    tile_ids: tuple[int, ...]  # the tiles the block owns, all durable now
    voxels: int  # output voxels written
    non_finite: int
    first_non_finite: tuple[int, ...] | None
    worker: str
    seconds: float


class BlockFailed(Exception):
    """A block's error, with the worker it ran on; ``final`` for errors a retry cannot cure."""

    def __init__(self, message: str, worker: str, final: bool):
        super().__init__(message, worker, final)
        self.message, self.worker, self.final = message, worker, final

    def __str__(self) -> str:
        return self.message


def run_block(payload: NetPayload, job: BlockJob, block_id: int, done: Sequence[int] = ()) -> BlockResult:
    """Compute block ``block_id`` and write its tiles (those in ``done`` are durable already and
    only recomputed when their batch has a missing tile)."""
    worker = worker_address()
    start = time.perf_counter()
    with reported(worker):
        return _run_block(payload, job, block_id, set(done), worker, start)


def _run_block(payload: NetPayload, job: BlockJob, block_id: int, done: set[int], worker: str,
               start: float) -> BlockResult:
    plan = job.plan
    tiles = [plan.tile_at(index) for index in job.blocks.tile_indices(block_id)]
    ids = [plan.tile_id(t) for t in tiles]
    batches = [tiles[i:i + job.batch_size] for i in range(0, len(tiles), job.batch_size)]
    todo = [t for batch in batches if any(plan.tile_id(t) not in done for t in batch) for t in batch]
    source = ChannelFirst(open_array(job.input), job.in_channels, job.ndim)
    device = resolve_device(job.device)
    engine = make_engine(_net(payload, job), job.engine_mode, device, source.stacked, job.precision)
    output = open_output(job.output, clean=False)
    sink = Sink(output, job.encoding, NonFinite(job.shift, strict=job.strict))
    write = tile_writes(sink, plan.tile_id, done)
    written: list[int] = []  # voxels per write; list.append is atomic across the writer threads

    try:
        predict_tiles(engine, source, plan, todo, lambda *args: written.append(write(*args)),
                      batch_size=job.batch_size, writers=writer_threads(device),
                      stream_unit=output.write_unit(len(plan.output_tile)))
    finally:
        output.close()
    non_finite = sink.non_finite
    return BlockResult(block_id, tuple(ids), sum(written), non_finite.count, non_finite.first, worker,
                       time.perf_counter() - start)


def run_level_shard(output_spec: ArraySpec, level: int, box: tuple[tuple[int, int], ...],
                    source: tuple[tuple[int, int], ...], step: tuple[int, ...], label: bool) -> int:
    """Write one shard of pyramid ``level`` from the level below; returns the shard's voxels."""
    with reported(worker_address()):
        output = open_output(output_spec, clean=False)
        try:
            write_level_block(output.level(level - 1), output.level(level), box, source, step, label)
        finally:
            output.close()
    return int(np.prod([b - a for a, b in box]))


@contextlib.contextmanager
def reported(worker: str) -> Iterator[None]:
    """A task's error as :class:`BlockFailed`: final for a user's error, retried otherwise."""
    try:
        yield
    except DensePredError as exc:
        raise BlockFailed(str(exc), worker, final=True) from None
    except Exception as exc:
        raise BlockFailed(f"{type(exc).__name__}: {exc}", worker, final=False) from exc


def _net(payload: NetPayload, job: BlockJob) -> Any:
    """This process's copy of the net, built on its first block."""
    key = (payload.key, str(job.device))
    with _NETS_LOCK:
        if key not in _NETS:
            torch.set_num_threads(job.threads or default_threads())
            with tempfile.TemporaryDirectory(prefix="densepred-") as folder:
                weights = Path(folder) / "weights.safetensors"
                weights.write_bytes(payload.weights)
                net = create_prediction_net(payload.config, param_file=weights)
            _NETS[key] = net.to(resolve_device(job.device))
        return _NETS[key]


def default_threads() -> int:
    """The worker's cores shared among the tasks it runs at once."""
    cores = available_cores()
    try:
        from distributed import get_worker

        slots = get_worker().state.nthreads
    except (ImportError, ValueError):
        slots = 1
    return max(1, cores // max(1, slots))


def worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"process {os.getpid()}"
