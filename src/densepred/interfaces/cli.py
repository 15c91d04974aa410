"""The ``densepred`` command. Thin: each subcommand parses arguments and calls the library.

Every error a user can cause is printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from ..config import load_config
from ..errors import DensePredError
from ..io.outputs import OUTPUT_DTYPES
from .elektronn_command import add_import_elektronn
from .info import run_info
from .model_options import (
    add_model_options,
    check_budget_options,
    model_job,
    refuse_model_options,
    run_model_plan,
    run_model_profile,
)
from .signals import terminate_cleanly
from .values import add_precision, parse_indices, parse_numbers, parse_roi, parse_shape, parse_size, positive_int
from .zoo_command import add_test_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with terminate_cleanly():
        try:
            check_named_files(args)  # a mistake in a file named answers before torch loads
            if computes(args):
                from ..networks.devices import fit_cpu_threads

                fit_cpu_threads()  # this process is densepred's: as many threads as it may keep busy
            return int(args.run(args) or 0)
        except DensePredError as exc:
            print(f"densepred: error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        except OSError as exc:  # the file system refused (a name too long, no permission, a full disk)
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"densepred: error: {_one_line(where + (exc.strerror or str(exc)))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("densepred: interrupted", file=sys.stderr)
            return 130


def computes(args: argparse.Namespace) -> bool:
    """Whether the command runs a network (torch): every one but ``info`` of a config, which is
    plain arithmetic on the config (its geometry)."""
    return not (args.run is run_info and not (args.model or args.model_file))


def check_named_files(args: argparse.Namespace) -> None:
    """The config, input and output a ``predict`` or ``plan`` names, checked as its run will check
    them (the config read, the input opened, the output's folder writable and not the input), but
    without torch: a mistake in them is told in a fraction of a second instead of after torch loads
    (about 2 s). An input over HTTP(S) is left to the run (each check there costs a request)."""
    if args.run not in (run_predict, run_plan):
        return
    from ..io.arrays import ArraySpec, open_array
    from ..io.output_checks import check_files

    if args.config is not None and not (getattr(args, "model", None) or getattr(args, "model_file", None)):
        refuse_model_options(args)  # the options' mistakes first, as the run tells them
        load_config(args.config)
    source = ArraySpec.parse(args.input) if args.input else None
    if source is not None and source.url is None:
        open_array(source)
    if getattr(args, "output", None) and args.run is run_predict and source is not None:
        check_files(source, ArraySpec.output(args.output))


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the arguments told in one line (not after the whole usage), and
    no abbreviations: ``plan --output x`` must not become ``--output-tensor x`` without a word."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="densepred",
        description="Fast, exact dense prediction of images and volumes with convolutional networks.",
    )
    parser.add_argument("--version", action="version", version=f"densepred {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_info, _add_train, _add_profile, _add_predict, _add_plan, add_import_elektronn, add_test_model,
                _add_demo):
        add(sub)
    return parser


def _add_info(sub: Any) -> None:
    info = sub.add_parser("info", help="print the network's geometry: per-layer sizes, FOV, stride, offset; or a "
                                       "model's tiling contract")
    info.add_argument("config", nargs="?", help="network config file (TOML); not with --model")
    info.add_argument("--input-shape", metavar="Z,Y,X", help="input tile shape to size the table for (a model's "
                                                             "window to check)")
    info.add_argument("--device", help="a model's: cpu or cuda:N, where its memory is measured (default: cuda if "
                                       "available)")
    add_model_options(info, command="info")
    info.set_defaults(run=run_info)


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train the config's network; weights go to its save_dir")
    train.add_argument("config", help="config file with [network] and [training] (TOML)")
    train.add_argument("--resume", action="store_true", help="continue from <name>-LAST.safetensors")
    train.add_argument("--steps", type=positive_int, help="total steps (overrides training.steps)")
    train.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_precision(train)
    train.set_defaults(run=run_train)


def _add_profile(sub: Any) -> None:
    prof = sub.add_parser("profile", help="measure speed against tile size and find the fastest tile that fits")
    prof.add_argument("config", nargs="?", help="network config file (TOML); not with --model")
    prof.add_argument("--device", help="cpu or cuda:N (default: cuda if available, else cpu)")
    prof.add_argument("--modes", help="engines to compare (default: mfp,dilated; also naive, stream)")
    prof.add_argument("--memory-limit", metavar="SIZE",
                      help="peak memory allowed, e.g. 8GiB or 500MB (default: 80%% of available RAM, "
                           "90%% of free GPU memory)")
    prof.add_argument("--max-seconds", type=float, default=600.0,
                      help="time budget for measuring shapes, once the measuring process has started (default: 600)")
    prof.add_argument("--out", help="folder for profile.csv and profile.png (default: the config's save_dir)")
    prof.add_argument("--write", action="store_true",
                      help="store the fastest tile as [prediction] tile_shape and mode in CONFIG")
    prof.add_argument("--aspect", metavar="Z,Y,X", help="relative tile extent per axis (default: the patch's)")
    prof.add_argument("--repeats", type=int, default=3, help="timed runs per shape after the warm-up (default: 3)")
    prof.add_argument("--quiet", action="store_true", help="no progress display")
    add_precision(prof)
    add_model_options(prof, command="profile")
    prof.set_defaults(run=run_profile)


def _add_predict(sub: Any) -> None:
    pred = sub.add_parser("predict", help="predict a volume on disk into an output on disk, tile by tile")
    pred.add_argument("config", nargs="?", help="the network's config file (TOML); not with --model")
    pred.add_argument("--input", required=True, metavar="SPEC",
                      help="file.h5:dataset, file.zarr[:path], file.n5:dataset, a precomputed folder, file.tif, "
                           "a folder of .tif sections, file.mrc, file.ims, file.npy, or https://host/file.zarr[:path]")
    pred.add_argument("--output", required=True, metavar="SPEC",
                      help="out.zarr[:group], out.h5:dataset, out.tif, out.mrc or out.npy")
    pred.add_argument("--weights", metavar="FILE", help="weights file (default: <save_dir>/<name>-LAST.safetensors)")
    pred.add_argument("--tile", metavar="Z,Y,X",
                      help="input tile shape (default: [prediction] tile_shape, else sized to memory)")
    pred.add_argument("--mode", choices=["auto", "mfp", "dilated", "naive", "stream", "exact", "blend"],
                      help="dense engine (default: the config's); exact or blend for --model")
    pred.add_argument("--mirror", action="store_true", help="mirror the edges so the output covers the whole input")
    pred.add_argument("--device", help="cpu or cuda:N (default: cuda if available, else cpu)")
    add_precision(pred)
    pred.add_argument("--dtype", choices=list(OUTPUT_DTYPES), default="float32",
                      help="stored probabilities: float32, float16, or uint8 (x255, rounded)")
    pred.add_argument("--argmax", action="store_true", help="store the most probable class per voxel instead")
    pred.add_argument("--classes", metavar="1,2", help="store only these classes' probabilities")
    pred.add_argument("--roi", metavar="Z0:Z1,Y0:Y1,X0:X1", help="predict only this box (image coordinates)")
    pred.add_argument("--batch-size", type=int, help="tiles per forward pass (default: 1)")
    pred.add_argument("--resume", action="store_true", help="finish an interrupted run: compute only missing tiles")
    pred.add_argument("--overwrite", action="store_true",
                      help="replace an existing output that densepred wrote (never other data)")
    pred.add_argument("--strict", action="store_true",
                      help="stop at input windows with NaN or inf (default: a warning with their count)")
    pred.add_argument("--levels", type=int,
                      help="OME-Zarr pyramid levels (default: down to 256 voxels per side; 1 = none)")
    pred.add_argument("--chunks", metavar="Z,Y,X",
                      help="OME-Zarr inner chunks, HDF5 chunks (default: about 64 per side)")
    pred.add_argument("--voxel-size", metavar="Z,Y,X",
                      help="physical voxel size for the OME-Zarr metadata (default: the input's, else 1)")
    pred.add_argument("--unit", help="unit of --voxel-size, a UDUNITS name such as nanometer or micrometer")
    pred.add_argument("--memory-limit", metavar="SIZE",
                      help="peak memory of the whole run, e.g. 2G or 8GiB (default: half of the available RAM, "
                           "60%% of the free GPU memory); the default tile is the largest that fits")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    scale = pred.add_argument_group("on a Dask cluster (see the README, On a cluster)")
    scale.add_argument("--workers", type=int, metavar="N",
                       help="run on a local cluster of N worker processes (with --device cuda: one per GPU)")
    scale.add_argument("--threads-per-worker", type=int, metavar="T", help="torch threads per worker "
                       "(default: this machine's cores shared out)")
    scale.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at this address")
    scale.add_argument("--scheduler-file", metavar="FILE", help="run on the Dask cluster this scheduler file names")
    scale.add_argument("--block", metavar="Z,Y,X", help="output tiles per cluster task on each axis (default: 1)")
    add_model_options(pred)
    pred.set_defaults(run=run_predict)


def _add_plan(sub: Any) -> None:
    plan = sub.add_parser("plan", help="size a prediction before running it: tiles, blocks, bytes, hours for N workers")
    plan.add_argument("config", nargs="?", help="the network's config file (TOML); not with --model")
    where = plan.add_mutually_exclusive_group(required=True)
    where.add_argument("--input", metavar="SPEC", help="the volume to predict (only its shape and dtype are read)")
    where.add_argument("--shape", metavar="Z,Y,X", help="or the volume's shape")
    plan.add_argument("--input-dtype", default="uint8", help="dtype of a --shape volume (default: uint8)")
    plan.add_argument("--workers", type=int, default=1, help="workers (processes or GPUs) the job runs on")
    plan.add_argument("--tile", metavar="Z,Y,X", help="input tile (default: [prediction] tile_shape, else by memory)")
    plan.add_argument("--block", metavar="Z,Y,X", default="1", help="tiles per block on each axis (default: 1)")
    plan.add_argument("--mode", choices=["auto", "mfp", "dilated", "naive", "stream", "exact", "blend"],
                      help="dense engine (default: the config's); exact or blend for a model")
    plan.add_argument("--mirror", action="store_true", help="the output covers the whole input")
    plan.add_argument("--dtype", choices=list(OUTPUT_DTYPES), default="float32", help="stored dtype")
    plan.add_argument("--channels", type=int, help="stored channels (default: all classes; 1 for --argmax)")
    rate = plan.add_mutually_exclusive_group()
    rate.add_argument("--profile", metavar="CSV", help="a profile.csv of this net on the workers' device")
    rate.add_argument("--measure", action="store_true", help="time one tile now on this machine")
    plan.add_argument("--memory-limit", metavar="SIZE", help="per worker, as for predict")
    plan.add_argument("--device", help="cpu or cuda:N (for --measure and the memory default)")
    add_precision(plan)
    add_model_options(plan, command="plan")
    plan.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from ..running.planning.job_plan import plan_job

    _log_warnings()
    if args.model or args.model_file:
        return run_model_plan(args)
    if args.config is None:
        raise DensePredError("densepred plan needs the network's config file, or a model: --model "
                             "package.module:Class or --model-file model.pt2")
    refuse_model_options(args)
    cfg = load_config(args.config)
    dims = cfg.network.dims
    result = plan_job(
        cfg, input=args.input, shape=parse_shape(args.shape, dims, "--shape") if args.shape else None,
        input_dtype=args.input_dtype, workers=args.workers,
        tile=parse_shape(args.tile, dims, "--tile") if args.tile else None,
        tiles_per_block=parse_shape(args.block, dims, "--block"), mode=args.mode, mirror=args.mirror,
        stored_channels=args.channels, stored_dtype=args.dtype, profile_csv=args.profile, measure=args.measure,
        memory_limit=parse_size(args.memory_limit, "--memory-limit") if args.memory_limit else None,
        device=args.device, precision=args.precision)
    print(result.report())
    return 0


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="synthetic EM data end to end: train, predict, score")
    demo.add_argument("--out", default="demo", help="output folder (default: demo)")
    demo.add_argument("--steps", type=positive_int, default=1000, help="training steps (default: 1000)")
    demo.set_defaults(run=run_demo)


def run_train(args: argparse.Namespace) -> int:
    from ..running import train

    _log_warnings()
    result = train(args.config, resume=args.resume, steps=args.steps, device=args.device,
                   progress=not args.quiet, precision=args.precision)
    if result.interrupted:
        print(f"interrupted at step {result.step}; weights saved to {result.last}; "
              "continue with --resume", file=sys.stderr)
        return 130
    best = f", best validation loss {result.best_val_loss:.4g} in {result.best}" if result.best else ""
    print(f"trained to step {result.step}: {result.last}{best}")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from ..running import profile

    _log_warnings()
    if args.model or args.model_file:
        return run_model_profile(args)
    if args.config is None:
        raise DensePredError("densepred profile needs the network's config file, or a model: --model "
                             "package.module:Class or --model-file model.pt2")
    refuse_model_options(args)
    if args.input or args.shape:
        raise DensePredError("--input and --shape are for a model's profile (--model); a config's profile measures "
                             "tiles, whatever the image")
    cfg = load_config(args.config)
    dims = cfg.network.dims
    aspect = parse_numbers(args.aspect, dims, "--aspect") if args.aspect else None
    limit = parse_size(args.memory_limit, "--memory-limit") if args.memory_limit else None
    check_budget_options(args)
    result = profile(cfg, device=args.device, modes=args.modes or "mfp,dilated", memory_limit=limit,
                     max_seconds=args.max_seconds, out=args.out, write=args.write, aspect=aspect,
                     repeats=args.repeats, progress=not args.quiet, precision=args.precision)
    print(f"device {result.device}, {args.precision}: matmul peak {result.matmul_flops / 1e9:.1f} GFLOP/s, "
          f"memory limit {result.memory_limit / 2**30:.2f} GiB")
    for stop in result.stops:
        print(f"  stopped {stop}")
    ratios = [(r.peak_bytes - result.baseline) / r.estimated_bytes for r in result.rows
              if r.status == "ok" and r.estimated_bytes >= 2**26]
    if ratios:
        print(f"  measured peak over the {result.baseline / 2**20:.0f} MiB baseline / estimate: "
              f"{min(ratios):.2f} to {max(ratios):.2f} (tiles estimated at 64 MiB or more)")
    if result.csv_path is not None:
        print(f"wrote {result.csv_path} and {result.png_path}")
    best = result.best
    if best is None:
        raise DensePredError(f"no tile shape could be measured: {'; '.join(result.stops) or 'every one failed'}")
    print(result.recommendation())
    if args.write:
        print(f"stored [prediction] tile_shape = {list(best.input_shape)}, mode = \"{best.mode}\" in {args.config}")
    else:
        print(f"use it: --write stores it in the config, or densepred predict ... "
              f"--tile {','.join(map(str, best.input_shape))} --mode {best.mode}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..running import predict_to_file

    _log_warnings()
    if args.model or args.model_file:
        job = model_job(args)
    elif args.config is None:
        raise DensePredError("densepred predict needs the network's config file, or a model: --model "
                             "package.module:Class or --model-file model.pt2")
    else:
        refuse_model_options(args)
        job = _config_job(args)
    if args.workers or args.scheduler or args.scheduler_file:
        _quiet_cluster_logs()
    try:
        result = predict_to_file(job)
    except KeyboardInterrupt:
        print(f"densepred: interrupted; finished tiles are kept, continue with: densepred predict ... --resume "
              f"(output {args.output})", file=sys.stderr)
        return 130
    print(f"wrote {result.output}: shape {list(result.shape)}, {result.computed} tile(s) computed"
          + (f", {result.skipped} already done" if result.skipped else "")
          + f"; tile {list(result.input_tile)}"
          + (f", estimated peak memory {result.estimated_peak / 2**30:.2f} GiB" if result.estimated_peak else ""))
    return 0


def _config_job(args: argparse.Namespace) -> Any:
    from ..running import PredictJob

    cfg = load_config(args.config)
    dims = cfg.network.dims
    return PredictJob(
        config=args.config, input=args.input, output=args.output, weights=args.weights,
        tile=parse_shape(args.tile, dims, "--tile", stack=True) if args.tile else None, mode=args.mode,
        mirror=args.mirror, device=args.device, precision=args.precision, dtype=args.dtype, argmax=args.argmax,
        classes=parse_indices(args.classes, "--classes") if args.classes else None,
        roi=parse_roi(args.roi, dims, stack=True) if args.roi else None, batch_size=args.batch_size, resume=args.resume,
        overwrite=args.overwrite, progress=not args.quiet, strict=args.strict, levels=args.levels,
        chunks=parse_shape(args.chunks, 1, "--chunks") if args.chunks and "," not in args.chunks else (
            parse_shape(args.chunks, dims, "--chunks", stack=True) if args.chunks else None),
        voxel_size=parse_numbers(args.voxel_size, 1, "--voxel-size") if args.voxel_size and "," not in args.voxel_size
        else (parse_numbers(args.voxel_size, dims, "--voxel-size", stack=True) if args.voxel_size else None),
        unit=args.unit, memory_limit=parse_size(args.memory_limit, "--memory-limit") if args.memory_limit else None,
        workers=args.workers, threads_per_worker=args.threads_per_worker, scheduler=args.scheduler,
        scheduler_file=args.scheduler_file, tiles_per_block=_per_axis(args.block, dims, "--block"))


def _quiet_cluster_logs() -> None:
    """Dask's routine messages (workers starting, connections) stay out of the run's output;
    its errors and densepred's own messages (retries, failures) remain."""
    import logging

    import distributed  # noqa: F401 - it sets its loggers' levels on import; override them after

    logging.getLogger("distributed").setLevel(logging.ERROR)


def _per_axis(text: str | None, dims: int, option: str) -> int | tuple[int, ...] | None:
    """One integer for every axis, or one per axis (a stack's z too)."""
    if not text:
        return None
    return parse_shape(text, 1, option)[0] if "," not in text else parse_shape(text, dims, option, stack=True)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    _log_warnings()
    return demo_main(["--out", args.out, "--steps", str(args.steps)])


def _log_warnings() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="densepred: warning: %(message)s")


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
