"""``densepred info``: a network's layers, field of view, stride and valid input sizes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..config import load_config, network_geometry
from ..errors import DensePredError
from ..geometry import Geometry
from .model_options import model_fields, refuse_model_options
from .values import parse_ints, parse_shape


def run_info(args: argparse.Namespace) -> int:
    if args.model or args.model_file:
        return run_model_info(args)
    if args.config is None:
        raise DensePredError("densepred info needs the network's config file, or a model: --model "
                             "package.module:Class or --model-file model.pt2")
    refuse_model_options(args)
    if args.device:
        raise DensePredError("--device is for a model's info (--model), whose memory is measured on it")
    cfg = load_config(args.config)
    net = cfg.network
    if net.dims == 0:
        sizes = " -> ".join(str(v) for v in (net.in_channels, *net.mlp, net.n_classes))
        print(f"network '{cfg.name}': feature vectors, perceptron {sizes}, {net.activation}")
        return 0
    geometry = network_geometry(net)
    shape = parse_shape(args.input_shape, geometry.ndim, "--input-shape") if args.input_shape else None
    print(f"network '{cfg.name}': {net.dims}D, {net.in_channels} channel(s) -> {net.n_classes} classes, "
          f"{len(geometry.layers)} layers, {net.activation}")
    print(format_table(geometry, shape))
    print()
    print(format_summary(geometry, shape))
    return 0


def run_model_info(args: argparse.Namespace) -> int:
    """``densepred info --model ...``: the model's tiling contract, smallest exact window and memory."""
    from ..running.jobs.model_info import model_info

    fields = model_fields(args)
    window = parse_ints(args.input_shape, None, "--input-shape")
    print(model_info(fields, window, args.device).report())
    return 0


def format_table(geometry: Geometry, input_shape: tuple[int, ...] | None) -> str:
    header = ["layer", "kernel", "pool", "maps", "stride", "receptive field"]
    if input_shape is not None:
        header += ["map (plain)", "MFP fragments x shape"]
    rows = [header]
    for row in geometry.table(input_shape):
        cells = [row.name, _x(row.kernel), _x(row.pool), str(row.channels), _x(row.stride),
                 _x(row.receptive_field)]
        if input_shape is not None:
            cells.append(_x(row.map_shape) if row.map_shape else "-")
            cells.append(f"{row.fragments} x {_x(row.fragment_shape)}" if row.fragment_shape else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def format_summary(geometry: Geometry, input_shape: tuple[int, ...] | None) -> str:
    lines = [
        f"field of view   {_x(geometry.fov)}",
        f"stride          {_x(geometry.stride)}",
        f"offset          {_x(geometry.offset)} (low side), {_x(geometry.border_high)} (high side)",
        f"useful work     {geometry.flops_per_voxel / 1e6:.4g} MFLOP per output voxel",
        f"smallest input  plain {_x(geometry.smallest_valid('plain'))}, "
        f"MFP {_x(geometry.smallest_valid('mfp'))}, dilated {_x(geometry.fov)}",
    ]
    if input_shape is None:
        return "\n".join(lines)
    dense = geometry.dense_output_shape(input_shape)
    if any(d < 1 for d in dense):
        lines.append(f"input {_x(input_shape)} is smaller than the field of view")
        return "\n".join(lines)
    lines.append(f"input {_x(input_shape)}: dense output {_x(dense)}, "
                 f"plain output {_x(geometry.plain_output_shape(input_shape))} at stride {_x(geometry.stride)}")
    for mode in ("plain", "mfp"):
        if geometry.is_valid(input_shape, mode):
            lines.append(f"  valid for {mode}")
        else:
            below, above = geometry.nearest_valid(input_shape, mode)
            near = " or ".join(_x(s) for s in (below, above) if s is not None)
            lines.append(f"  not valid for {mode}; nearest valid: {near}")
    return "\n".join(lines)


def _x(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else " x ".join(str(v) for v in shape)
