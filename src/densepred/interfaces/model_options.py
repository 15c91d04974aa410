"""``densepred predict --model ...``: the options for a model written elsewhere, and its job."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import DensePredError
from ..geometry.scale import scale_pairs
from .values import parse_floats, parse_ints, parse_size


def add_model_options(pred: argparse.ArgumentParser, command: str = "predict") -> None:
    """The options that name a model and its tiling contract; for ``predict`` and ``plan`` also
    how its windows are combined, for ``profile`` the image it is profiled for (``plan`` has
    its own)."""
    group = pred.add_argument_group("a model written elsewhere (PyTorch U-Nets; see the README, Models written "
                                    "elsewhere)")
    group.add_argument("--model", metavar="MODULE:CLASS",
                       help="package.module:Class or path/to/file.py:Class, built with --model-kwargs")
    group.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments of the class, a JSON object")
    group.add_argument("--model-file", metavar="FILE.pt2|rdf.yaml|MODEL.zip",
                       help="a torch.export program instead (it unpickles: load only files you trust), or a "
                            "bioimage.io model: its rdf.yaml or zipped package (pytorch_state_dict weights; dims, "
                            "channels and preprocessing from it)")
    group.add_argument("--trust-imports", metavar="PKG", action="append", default=[],
                       help="let a bioimage.io package import its architecture from the installed package PKG "
                            "(runs that package's code; known model libraries need no such trust; repeatable)")
    group.add_argument("--dims", type=int, default=3, choices=[2, 3], help="the model's spatial dimensions")
    group.add_argument("--in-channels", type=int, default=1, help="the model's input channels (default: 1)")
    group.add_argument("--activation", choices=["softmax", "sigmoid", "identity"],
                       help="what the logits become (default: softmax, refused for a one-channel model; for a "
                            "bioimage.io model, its own sigmoid or softmax postprocessing, else identity)")
    group.add_argument("--weights-format", choices=["pytorch_state_dict", "torchscript", "onnx"],
                       help="a bioimage.io package's weights to run (default: the first it has locally, in this "
                            "order)")
    group.add_argument("--output-tensor", metavar="NAME|INDEX",
                       help="of a model with several outputs, the one to predict (default: the first)")
    group.add_argument("--factor", metavar="F|Z,Y,X",
                       help="the model's downsampling factor, given instead of probed (window origins are "
                            "multiples of it)")
    group.add_argument("--smallest", metavar="N|Z,Y,X",
                       help="the smallest input it accepts (it accepts smallest + k * factor); with --factor, "
                            "no size is probed")
    group.add_argument("--context", metavar="N|Z,Y,X|LO:HI,...",
                       help="how far an output voxel's inputs reach, per side, given instead of probed")
    group.add_argument("--scale", metavar="S|Z,Y,X",
                       help="output voxels per input voxel of a model whose output is at another scale (0.5 or "
                            "1/2: half size; 4: upsampled 4x), given instead of probed")
    if command != "predict":
        group.add_argument("--weights", metavar="FILE", help="the model's weights (safetensors or a state dict)")
    if command == "profile":
        where = group.add_mutually_exclusive_group()
        where.add_argument("--input", metavar="SPEC", help="the image the model will predict (only its shape is read)")
        where.add_argument("--shape", metavar="Z,Y,X", help="or its spatial shape (y,x for a 2D model)")
        group.add_argument("--no-peaks", action="store_true",
                           help="on the CPU, time the windows in this process without measuring their peak memory "
                                "(each window otherwise runs in a fresh process: about 2 s more per window)")
        return
    group.add_argument("--overlap", type=float, default=0.5, help="blend mode: window overlap (default: 0.5)")
    group.add_argument("--tta", metavar="flips|AXES", help="flip test-time augmentation: 'flips' or axes like 1,2")


MODEL_ONLY = {"model_kwargs": None, "trust_imports": [], "dims": 3, "in_channels": 1, "activation": None,
              "weights_format": None, "output_tensor": None, "factor": None, "smallest": None, "context": None,
              "scale": None, "overlap": 0.5, "tta": None, "no_peaks": False}


def refuse_model_options(args: argparse.Namespace) -> None:
    """A config's net given an option of models from elsewhere: one line, never ignored."""
    given = ["--" + name.replace("_", "-") for name, default in MODEL_ONLY.items()
             if getattr(args, name, default) != default]
    if given:
        raise DensePredError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for models from elsewhere "
                             "(--model, --model-file); a config's net takes its settings from the config")


def model_job(args: argparse.Namespace) -> Any:
    """The :class:`~densepred.running.PredictJob` of a ``--model`` or ``--model-file`` run."""
    from ..running import PredictJob

    if args.config is not None:
        raise DensePredError("give a config or a model (--model, --model-file), not both")
    for option, value in (("--mirror", args.mirror), ("--roi", args.roi), ("--batch-size", args.batch_size)):
        if value:
            raise DensePredError(f"{option} is for densepred's own nets; a model from --model takes --mode exact or "
                                 "blend, --tile (its window), --overlap and --tta")
    if args.mode not in (None, "auto", "exact", "blend"):
        raise DensePredError(f"--mode {args.mode} is for densepred's own nets; a model from --model takes auto, "
                             "exact or blend")
    return PredictJob(
        config=None, input=args.input, output=args.output, weights=args.weights, model=args.model,
        model_kwargs=args.model_kwargs, model_file=args.model_file, trust_imports=tuple(args.trust_imports),
        dims=args.dims, in_channels=args.in_channels,
        activation=args.activation, mode=args.mode or "auto", tile=_per_axis(args.tile, "--tile"),
        overlap=args.overlap, tta=_tta(args.tta), output_tensor=args.output_tensor,
        weights_format=args.weights_format, contract=contract_fields(args), device=args.device,
        precision=args.precision, dtype=args.dtype,
        argmax=args.argmax,
        classes=parse_ints(args.classes, None, "--classes"), resume=args.resume, overwrite=args.overwrite,
        strict=args.strict, workers=args.workers, threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler, scheduler_file=args.scheduler_file, tiles_per_block=_block(args.block),
        progress=not args.quiet, levels=args.levels, chunks=_per_axis(args.chunks, "--chunks"),
        voxel_size=None if args.voxel_size is None else parse_floats(args.voxel_size), unit=args.unit,
        memory_limit=parse_size(args.memory_limit, "--memory-limit") if args.memory_limit else None)


def check_budget_options(args: argparse.Namespace) -> None:
    """A profile's ``--max-seconds`` and ``--repeats``, told with the command line's names."""
    if not 0 < args.max_seconds < math.inf or args.repeats < 1:
        raise DensePredError("--max-seconds must be a positive number of seconds and --repeats at least 1")


def run_model_profile(args: argparse.Namespace) -> int:
    """``densepred profile --model ...``: the model's exact windows measured for an image."""
    from ..running.profiling.model_profile import profile_model

    for option, given in (("--modes", args.modes), ("--aspect", args.aspect), ("--write", args.write)):
        if given:
            raise DensePredError(f"{option} is for densepred's own nets; a model's profile measures its exact "
                                 "windows for the image of --input or --shape")
    check_budget_options(args)
    result = profile_model(
        **model_fields(args), input=args.input, shape=parse_ints(args.shape, None, "--shape"), device=args.device,
        precision=args.precision, memory_limit=parse_size(args.memory_limit, "--memory-limit")
        if args.memory_limit else None, max_seconds=args.max_seconds, repeats=args.repeats, out=args.out,
        progress=not args.quiet, peaks=not args.no_peaks)
    limit = "the default" if result.memory_limit is None else f"{result.memory_limit / 2**30:.2f} GiB"
    print(f"device {result.device}, {result.precision}: memory limit {limit}, image "
          f"{'x'.join(map(str, result.image_shape))}")
    for row in result.rows:
        print("  " + _row_text(result, row))
    for stop in result.stops:
        print(f"  stopped: {stop}")
    if result.csv_path is not None:
        print(f"wrote {result.csv_path}")
    if result.best is None:
        raise DensePredError(f"no window could be measured: {'; '.join(result.stops) or 'each one failed'}")
    print(result.recommendation())
    return 0


def run_model_plan(args: argparse.Namespace) -> int:
    """``densepred plan --model ...``: the model's job sized before it runs."""
    from ..running.jobs.model_plan import plan_model_job

    fields = model_fields(args)  # a config given with the model is refused first
    if args.mirror:
        raise DensePredError("--mirror is for densepred's own nets; a model's output always covers its input")
    if args.mode not in (None, "auto", "exact", "blend"):
        raise DensePredError(f"--mode {args.mode} is for densepred's own nets; a model takes auto, exact or blend")
    result = plan_model_job(
        **fields, input=args.input, shape=parse_ints(args.shape, None, "--shape"), input_dtype=args.input_dtype,
        workers=args.workers, window=_per_axis(args.tile, "--tile"),
        blocks=None if args.block == "1" else _block(args.block), mode=args.mode or "auto", overlap=args.overlap,
        tta=_tta(args.tta), stored_channels=args.channels, stored_dtype=args.dtype, profile_csv=args.profile,
        measure=args.measure, memory_limit=parse_size(args.memory_limit, "--memory-limit")
        if args.memory_limit else None, device=args.device, precision=args.precision)
    print(result.report())
    return 0


def _row_text(result: Any, row: Any) -> str:
    window = "x".join(map(str, row.window))
    if row.status != "ok":
        return f"{row.precision} window {window}: out of memory (estimated {row.estimated_bytes / 2**30:.2f} GiB)"
    peak = "" if row.peak_bytes is None else f", measured {row.peak_bytes / 2**30:.2f} GiB"
    peak += "" if row.heap_kept else "; maps returned as freed: the limit holds under 2x the estimate"
    return (f"{row.precision} window {window}: {row.windows:,} windows x {row.seconds:.3g} s = "
            f"{row.image_seconds:.3g} s, {result.rate(row) / 1e6:.3g} Mvox/s (estimated "
            f"{row.estimated_bytes / 2**30:.2f} GiB{peak})")


def model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~densepred.PredictJob` fields that name a model, from its options (``info``,
    ``profile`` and ``plan``; a config given with them is refused)."""
    if args.config is not None:
        raise DensePredError("give a config or a model (--model, --model-file), not both")
    return {"model": args.model, "model_file": args.model_file, "model_kwargs": args.model_kwargs,
            "weights": args.weights, "trust_imports": tuple(args.trust_imports), "dims": args.dims,
            "in_channels": args.in_channels, "activation": args.activation, "output_tensor": args.output_tensor,
            "weights_format": args.weights_format, "contract": contract_fields(args)}


def contract_fields(args: argparse.Namespace) -> dict[str, Any] | None:
    """The tiling contract fields given on the command line (one value means every axis; the
    model's dims are known only once it is loaded)."""
    fields: dict[str, Any] = {}
    for name in ("factor", "smallest"):
        text = getattr(args, name, None)
        if text:
            values = parse_ints(text, None, f"--{name}")
            if len(values) not in (1, 2, 3) or min(values) < 1:
                raise DensePredError(f"--{name} {text!r} is invalid; expected positive integers like 16 or 1,16,16")
            fields[name] = values
    if getattr(args, "context", None):
        fields["context"] = _context(args.context)
    if getattr(args, "scale", None):
        values = args.scale.split(",")
        try:
            scale_pairs(values, len(values))  # checks each value; the model's dims expand one value
        except DensePredError:
            raise DensePredError(f"--scale {args.scale!r} is invalid; expected output voxels per input voxel like "
                                 "0.5, 1/2 or 4, one or one per axis (z,y,x)") from None
        fields["scale"] = values
    return fields or None


def _context(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sides = [part.split(":") for part in text.split(",")]
        context = tuple((int(s[0]), int(s[-1])) for s in sides if len(s) in (1, 2))
    except ValueError:
        context = ()
    if len(context) not in (1, 2, 3) or len(context) != len(text.split(",")) or min(min(c) for c in context) < 0:
        raise DensePredError(f"--context {text!r} is invalid; expected voxels per side like 40, 8,40,40 or "
                             "8:8,40:40,40:40 (low:high)")
    return context


def _block(text: str | None) -> int | tuple[int, ...] | None:
    values = parse_ints(text, None, "--block")
    if values is not None and (len(values) not in (1, 2, 3) or 0 in values):
        raise DensePredError(f"--block {text!r} is invalid; expected positive integers like 2 or 1,2,2")
    return values[0] if values is not None and len(values) == 1 else values


def _tta(text: str | None) -> str | tuple[int, ...] | None:
    if text is None or text == "flips":
        return text
    try:
        return parse_ints(text, None, "--tta")
    except DensePredError:
        raise DensePredError(f"--tta {text!r} is invalid; expected flips (every axis) or the spatial axes to "
                             "flip, like 1,2") from None


__all__ = ["add_model_options", "contract_fields", "model_fields", "model_job", "run_model_plan",
           "run_model_profile"]


def _per_axis(text: str | None, option: str) -> int | tuple[int, ...] | None:
    """A window or chunk shape for a model: one value for every axis, or 2 or 3 (y,x or z,y,x).
    The model's dims are known only once it is loaded (a bioimage.io package says them; a 2D
    model over a stack takes z,y,x), so the run checks the count against them."""
    if text and "," not in text:
        return parse_ints(text, 1, option)[0]
    values = parse_ints(text, None, option)
    if values is not None and len(values) not in (2, 3):
        raise DensePredError(f"{option} {text!r} is invalid; expected one value, y,x or z,y,x like 64,128,128")
    return values
