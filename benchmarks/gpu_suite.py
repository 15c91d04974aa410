"""The GPU table in one run (at most about 5 minutes on an H200): exactness, each precision's
error and speed, the profiler's walk, an exact U-Net beside a whole forward (and MONAI's
sliding window when MONAI is installed), its windows profiled (densepred profile --model),
memory estimates against measured peaks, training
steps/s per precision, and the file pipeline end to end (the near-free net of
pipeline_ceiling.py, and m36 against its engine alone on the same tile; last, the near-free net
on the host's CPU with 2 writer threads and with more).

    python benchmarks/gpu_suite.py                     # on cuda
    python benchmarks/gpu_suite.py --device cpu --quick  # a smoke run of the same code

Prints Markdown tables for docs/BENCHMARKS.md; the device is named in the first line.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import densepred
from densepred.networks import DenseEngine
from densepred.networks.precision import runnable_precisions

ROOT = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device, repeats: int = 3) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def runnable(device: torch.device) -> list[str]:
    return runnable_precisions(device)


def m36(sharp: bool = True) -> densepred.DenseNet:
    torch.manual_seed(0)
    net = densepred.build_net(densepred.load_config(ROOT / "examples" / "m36.toml")).eval()
    if sharp:
        with torch.no_grad():
            net.blocks[-1].transform.weight.mul_(8.0)
    return net


def exactness(device: torch.device, quick: bool) -> list[str]:
    """Every engine in float32 on the device against the dilated engine in float64 on the CPU (itself
    held to the window-by-window definition by the tests)."""
    rows = []
    for name in ("neuro3d", "m36"):
        torch.manual_seed(0)
        net = densepred.build_net(densepred.load_config(ROOT / "examples" / f"{name}.toml")).eval()
        fov = net.geometry.fov
        shape = tuple(f + (8 if quick else 24) for f in fov)
        x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
        reference = torch.softmax(DenseEngine(net, "dilated", torch.device("cpu"), torch.float64)(x.double()), 1)
        for mode in ("naive", "mfp", "dilated", "stream"):
            got = torch.softmax(DenseEngine(net, mode, device)(x).double().cpu(), 1)
            error = float((got - reference).abs().max())
            flips = float((got.argmax(1) != reference.argmax(1)).double().mean())
            rows.append(f"| {name} | {mode} | {'x'.join(map(str, shape))} | {error:.1e} | {flips:.1e} |")
    return ["| net | engine | input | max abs dp vs float64 | argmax flips |", "|---|---|---|---|---|", *rows]


def precisions(device: torch.device, quick: bool) -> list[str]:
    """m36's engines per precision: rate and error against float32 on the same tile."""
    net = m36()
    rows = []
    for mode, shape in (("mfp", (124, 124, 124) if quick else (268, 268, 268)),
                        ("stream", (124, 124, 124) if quick else (404, 212, 212))):
        x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(2))
        reference = None
        for precision in runnable(device):
            engine = DenseEngine(net, mode, device, precision)
            out = {}

            def run(engine=engine, out=out, x=x):
                out["p"] = torch.softmax(engine(x).float(), 1)

            seconds = timed(run, device, repeats=1 if quick else 3)
            p = out["p"]
            reference = p if reference is None else reference
            error = float((p - reference).abs().max())
            flips = float((p.argmax(1) != reference.argmax(1)).float().mean())
            voxels = p[0, 0].numel()
            rows.append(f"| m36 {mode} | {'x'.join(map(str, shape))} | {precision} | {voxels / seconds / 1e6:.2f} | "
                        f"{error:.1e} | {flips:.1e} |")
            del engine, p, out
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return ["| engine | input | precision | Mvox/s | max abs dp vs float32 | argmax flips |",
            "|---|---|---|---|---|---|", *rows]


def profile_walk(device: torch.device, quick: bool) -> list[str]:
    """The profiler's walk for m36 in float32: which tiles it measured, measured peak / estimate."""
    with tempfile.TemporaryDirectory() as folder:
        result = densepred.profile(ROOT / "examples" / "m36.toml", device=str(device), modes=("mfp", "dilated"),
                                   max_seconds=20 if quick else 90, out=folder, repeats=1, progress=False)
    rows = []
    for row in result.rows:
        ratio = (row.peak_bytes - result.baseline) / row.estimated_bytes if row.estimated_bytes else 0.0
        rows.append(f"| {row.mode} | {'x'.join(map(str, row.input_shape))} | {row.status} | "
                    f"{row.voxels_per_s / 1e6:.2f} | {row.peak_bytes / 2**30:.2f} | {ratio:.2f} |")
    return ["| mode | input | status | Mvox/s | peak GiB | (peak - baseline) / estimate |",
            "|---|---|---|---|---|---|", *rows, "", *(f"stopped {s}" for s in result.stops)]


class UNet(nn.Module):
    """A three-level 3D U-Net with batch norm (BasicUNet-like widths, halved)."""

    def __init__(self, width: int = 16, classes: int = 3):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(),
                                 nn.Conv3d(cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU())

        widths = [width, 2 * width, 4 * width, 8 * width]
        self.down = nn.ModuleList([block(1 if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(3)])
        self.up = nn.ModuleList([block(2 * widths[i], widths[i]) for i in range(3)])
        self.head = nn.Conv3d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else nn.functional.max_pool3d(x, 2))
            skips.append(x)
        for i in reversed(range(3)):
            x = self.up[i](torch.cat([skips[i], self.ups[i](x)], dim=1))
        return self.head(x)


def unet(device: torch.device, quick: bool) -> list[str]:
    torch.manual_seed(0)
    model = UNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    shape = (48, 128, 128) if quick else (96, 256, 256)
    volume = np.random.default_rng(3).random(shape, dtype=np.float32)
    net = densepred.from_torch(model.to(device), dims=3, in_channels=1)
    rows = []
    for precision in [p for p in runnable(device) if p in ("float32", "bfloat16")]:
        seconds = timed(lambda p=precision: densepred.predict_dense(net, volume, mode="exact", device=device,
                                                                    precision=p), device, repeats=1 if quick else 3)
        rows.append(f"| densepred exact, {precision} | {seconds:.2f} |")
    with torch.inference_mode():
        x = torch.from_numpy(volume)[None, None].to(device)
        seconds = timed(lambda: torch.softmax(model(x), 1).cpu(), device, repeats=1 if quick else 3)
    rows.append(f"| one whole forward, float32 | {seconds:.2f} |")
    try:
        from monai.inferers import sliding_window_inference

        roi = (min(64, shape[0]), 128, 128)
        with torch.inference_mode():
            seconds = timed(lambda: torch.softmax(sliding_window_inference(x, roi, 1, model, overlap=0.25,
                                                                           mode="gaussian"), 1).cpu(), device)
        rows.append(f"| MONAI sliding_window_inference, roi {roi}, overlap 0.25 | {seconds:.2f} |")
    except ImportError:
        rows.append("| MONAI sliding_window_inference | not installed (pip install monai) |")
    return [f"U-Net (batch norm, widths 16-128) on {'x'.join(map(str, shape))}:", "", "| run | seconds |",
            "|---|---|", *rows]


def model_windows(device: torch.device, quick: bool) -> list[str]:
    """``densepred profile --model`` of the U-Net above: its exact windows' speed, and on CUDA
    each window's allocator peak against the estimate the window is chosen by."""
    shape = (48, 128, 128) if quick else (128, 512, 512)
    precision = "bfloat16" if "bfloat16" in runnable(device) else "float32"
    result = densepred.profile_model(f"{Path(__file__).resolve()}:UNet", shape=shape, device=str(device),
                                     precision=precision, max_seconds=10 if quick else 45,
                                     repeats=1 if quick else 3, progress=False)
    rows = []
    for row in result.rows:
        if row.status != "ok":
            rows.append(f"| {row.precision} | {'x'.join(map(str, row.window))} | out of memory | | | | |")
            continue
        peak = "" if row.peak_bytes is None else f"{row.peak_bytes / 2**30:.2f}"
        ratio = "" if row.peak_bytes is None else f"{row.peak_bytes / row.estimated_bytes:.2f}"
        rows.append(f"| {row.precision} | {'x'.join(map(str, row.window))} | {row.windows} | {row.seconds:.3f} | "
                    f"{result.rate(row) / 1e6:.2f} | {row.estimated_bytes / 2**30:.2f} | {peak} | {ratio} |")
    return [f"The U-Net's exact windows for a {'x'.join(map(str, shape))} image (densepred.profile_model):", "",
            "| precision | window | windows | s per window | Mvox/s | estimate GiB | peak GiB | peak / estimate |",
            "|---|---|---|---|---|---|---|---|", *rows, "", *[f"stopped: {stop}" for stop in result.stops],
            result.recommendation()]


def training(device: torch.device, quick: bool) -> list[str]:
    from densepred.interfaces.demo import write_example

    rows = []
    steps = 20 if quick else 200
    for precision in [p for p in runnable(device) if p in ("float32", "bfloat16", "float16")]:
        with tempfile.TemporaryDirectory() as folder:
            config = write_example(Path(folder), steps)
            start = time.perf_counter()
            densepred.train(config, device=str(device), precision=precision, progress=False)
            seconds = time.perf_counter() - start
        rows.append(f"| demo net, {steps} steps | {precision} | {steps / seconds:.1f} |")
    return ["| training | precision | steps/s |", "|---|---|---|", *rows]


def pipeline(device: torch.device, quick: bool) -> list[str]:
    """File to file in this process (a warm second run timed): the near-free net over a uint8 zarr
    volume into OME-Zarr (two classes, uint8, default pyramid, as issue 25's table), and m36 in
    its fastest precision here beside its engine alone on the tile the plan chose."""
    from pipeline_ceiling import textured_volume, trivial_net

    from densepred.running.jobs import PredictJob, predict_to_file
    from densepred.running.planning.job_plan import plan_job

    precision = "bfloat16" if "bfloat16" in runnable(device) else "float32"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        trivial = trivial_net(work)
        m36_config = _m36_run(work)
        for name, config, shape, how in (("near-free net", trivial, (64, 256, 256) if quick else (256, 1024, 1024),
                                          "float32"),
                                         ("m36", m36_config, (64, 128, 128) if quick else (256, 512, 512), precision)):
            source = textured_volume(work / f"{name}.zarr", shape)
            job = PredictJob(str(config), str(source), str(work / "out.zarr"), mirror=True, dtype="uint8",
                             device=str(device), precision=how, overwrite=True, progress=False)
            predict_to_file(job)  # warm-up: cuDNN's choices, the allocator, page cache
            sync(device)
            start = time.perf_counter()
            result = predict_to_file(job)
            seconds = time.perf_counter() - start
            voxels = math.prod(result.shape[1:])
            plan = plan_job(config, input=str(source), mirror=True, stored_dtype="uint8", measure=True,
                            device=str(device), precision=how)
            same = ("same tile" if tuple(plan.input_tile) == tuple(result.input_tile) else
                    f"plan's tile {plan.input_tile}")
            rows.append(f"| {name} | {'x'.join(map(str, shape))} | {how} | {'x'.join(map(str, result.input_tile))} "
                        f"({plan.mode}, {result.tiles} tiles) | {seconds:.2f} | {voxels / seconds / 1e6:.1f} | "
                        f"{plan.rate / 1e6:.1f} ({same}) | {voxels / seconds / plan.rate:.2f} |")
    return ["| net | volume | precision | input tile | seconds | end to end Mvox/s | engine alone Mvox/s | ratio |",
            "|---|---|---|---|---|---|---|---|", *rows]


def host(device: torch.device, quick: bool) -> list[str]:
    """The near-free net file to file on this host's CPU (issue 25's ``--device cpu`` row, the
    settings of ``pipeline``), with the CPU's writer threads (``tiling.WRITERS``, 2) and with
    more: whether two writers cap a many-core CPU when the network costs nothing."""
    from pipeline_ceiling import textured_volume, trivial_net

    from densepred.running.jobs import PredictJob, predict_to_file
    from densepred.running.planning import tiling
    from densepred.system import available_cores

    cores, default = available_cores(), tiling.WRITERS
    counts = sorted({default, max(default, cores // 4), max(default, cores // 2)})
    shape = (64, 256, 256) if quick else (256, 1024, 1024)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        source = textured_volume(work / "in.zarr", shape)
        job = PredictJob(str(trivial_net(work)), str(source), str(work / "out.zarr"), mirror=True, dtype="uint8",
                         device="cpu", overwrite=True, progress=False)
        predict_to_file(job)  # warm-up: the page cache
        try:
            for count in counts:
                tiling.WRITERS = count
                start, cpu = time.perf_counter(), time.process_time()
                result = predict_to_file(job)
                seconds = time.perf_counter() - start
                rows.append(f"| {count} | {seconds:.2f} | {math.prod(result.shape[1:]) / seconds / 1e6:.1f} | "
                            f"{(time.process_time() - cpu) / seconds:.1f} |")
        finally:
            tiling.WRITERS = default
    return [f"The near-free net on the host's CPU ({cores} cores), {'x'.join(map(str, shape))} uint8 zarr to "
            "OME-Zarr (two classes, uint8, default pyramid), --device cpu:", "",
            "| writer threads | seconds | end to end Mvox/s | cores used |", "|---|---|---|---|", *rows]


def _m36_run(work: Path) -> Path:
    """examples/m36.toml with its run folder in ``work``, and random sharp weights saved there."""
    from densepred.networks.weights import save_weights

    config = work / "m36.toml"
    text = (ROOT / "examples" / "m36.toml").read_text()
    config.write_text(text.replace('name = "m36"', f'name = "m36"\nsave_dir = "{work / "m36run"}"', 1))
    (work / "m36run").mkdir()
    save_weights(m36(), work / "m36run" / "m36-LAST.safetensors")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    parser.add_argument("--parts", default="exactness,precisions,profile,unet,models,training,pipeline,host")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, precisions: {', '.join(runnable(device))}\n")
    parts = {"exactness": exactness, "precisions": precisions, "profile": profile_walk, "unet": unet,
             "models": model_windows, "training": training, "pipeline": pipeline, "host": host}
    start = time.perf_counter()
    for part in args.parts.split(","):
        begun = time.perf_counter()
        lines = parts[part](device, args.quick)
        print(f"### {part} ({time.perf_counter() - begun:.0f} s)\n")
        print("\n".join(lines) + "\n", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
