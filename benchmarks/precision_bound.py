"""What each precision costs in accuracy and buys in speed, against float32 on the same input.

Nets: the demo's membrane net trained here (float32, and again with mixed-precision training),
m36 with trained-looking random weights (sharp outputs: the output layer scaled by 8), and a
3D U-Net from elsewhere (batch norm with trained-looking statistics) tiled exactly. For every
precision the device runs: max |p - p_float32| over all classes and voxels, the share of
voxels whose argmax differs, and for the demo net its membrane F1 on the held-out volume. The
speed rows time m36's engine on one tile (the median of three after a warm-up).

    python benchmarks/precision_bound.py [--device cpu] [--steps 1000] [--tile 80,150,150]
    DENSEPRED_EMULATE_PRECISION=1 python benchmarks/precision_bound.py --device cpu --nets demo --train-in float16

Prints Markdown tables for docs/PRECISION.md and docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

import densepred
from densepred.interfaces.demo import membrane_scores, write_example
from densepred.networks import DenseEngine
from densepred.networks.precision import runnable_precisions
from densepred.running.training import read_history

ROOT = Path(__file__).resolve().parent.parent


def runnable(device: torch.device) -> list[str]:
    return runnable_precisions(device)


def difference(p: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    return float(np.abs(p - reference).max()), float(np.mean(p.argmax(0) != reference.argmax(0)))


def demo_rows(device: torch.device, precisions: list[str], steps: int, folder: Path,
              train_in: list[str]) -> list[str]:
    """The trained demo net: each precision's prediction against float32's, and its F1; then the
    same net trained with mixed precision (validation loss and F1 against float32 training)."""
    rows = []
    trained = {}
    for training in ["float32", *(p for p in precisions if p in train_in and p != "float32")]:
        out = folder / f"demo-{training}"
        out.mkdir()
        config = write_example(out, steps)
        start = time.perf_counter()
        densepred.train(config, device=device, precision=training, progress=False)
        seconds = time.perf_counter() - start
        best = min(r["val_loss"] for r in read_history(out / "run" / "history.csv") if r["val_loss"] is not None)
        trained[training] = (config, best, seconds)
    config = trained["float32"][0]
    with h5py.File(config.parent / "test.h5") as f:
        raw, truth = f["raw"][...], f["label"][...].astype(bool)
    net = densepred.create_prediction_net(config, mode="mfp")
    reference = densepred.predict_dense(net, raw, mirror=True, device=device)
    for precision in precisions:
        p = densepred.predict_dense(net, raw, mirror=True, device=device, precision=precision)
        largest, flips = difference(p, reference)
        f1 = membrane_scores(p[1] > 0.5, truth)["F1"]
        rows.append(f"| demo membrane net (trained) | {precision} | {largest:.2e} | {flips:.2e} | F1 {f1:.4f} |")
    for training, (other, best, seconds) in trained.items():
        net = densepred.create_prediction_net(other, mode="mfp")
        p = densepred.predict_dense(net, raw, mirror=True, device=device)
        f1 = membrane_scores(p[1] > 0.5, truth)["F1"]
        rows.append(f"| demo net trained in {training}, {steps} steps ({seconds:.0f} s) | float32 | - | - | "
                    f"best val loss {best:.4f}, F1 {f1:.4f} |")
    return rows


def m36_rows(device: torch.device, precisions: list[str], tile: tuple[int, ...]) -> tuple[list[str], list[str]]:
    torch.manual_seed(0)
    net = densepred.build_net(densepred.load_config(ROOT / "examples" / "m36.toml")).eval()
    with torch.no_grad():
        net.blocks[-1].transform.weight.mul_(8.0)
    x = torch.rand(1, 1, *tile, generator=torch.Generator().manual_seed(1))
    accuracy, speed = [], []
    reference = None
    for precision in precisions:
        engine = DenseEngine(net, "mfp", device, precision)
        engine(x)  # warm-up
        times = []
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            p = torch.softmax(engine(x).float(), dim=1)[0].cpu().numpy()
            _sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        voxels = p[0].size
        if reference is None:
            reference = p
        largest, flips = difference(p, reference)
        accuracy.append(f"| m36, trained-looking random weights, input {'x'.join(map(str, tile))} | {precision} | "
                        f"{largest:.2e} | {flips:.2e} | |")
        speed.append(f"| m36 mfp, input {'x'.join(map(str, tile))}, {device} | {precision} | {seconds:.2f} s | "
                     f"{voxels / seconds / 1e6:.3f} Mvox/s |")
    return accuracy, speed


class UNet(nn.Module):
    """A two-level 3D U-Net with batch norm and same-padded convolutions."""

    def __init__(self, width: int = 16, classes: int = 3):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU())

        self.down = nn.ModuleList([block(1, width), block(width, 2 * width), block(2 * width, 4 * width)])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(2 * width, width, 2, stride=2),
                                  nn.ConvTranspose3d(4 * width, 2 * width, 2, stride=2)])
        self.up = nn.ModuleList([block(2 * width, width), block(4 * width, 2 * width)])
        self.head = nn.Conv3d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else nn.functional.max_pool3d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.ups))):
            x = self.up[i](torch.cat([skips[i], self.ups[i](x)], dim=1))
        return self.head(x)


def unet_rows(device: torch.device, precisions: list[str]) -> list[str]:
    torch.manual_seed(0)
    model = UNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.head.weight.mul_(8.0)
    image = np.random.default_rng(2).random((48, 96, 96), dtype=np.float32)
    net = densepred.from_torch(model, dims=3, in_channels=1)
    reference = None
    rows = []
    for precision in precisions:
        p = densepred.predict_dense(net, image, mode="exact", tile_shape=(40, 64, 64), device=device,
                                    precision=precision)
        reference = p if reference is None else reference
        largest, flips = difference(p, reference)
        rows.append(f"| 3D U-Net from elsewhere (batch norm), exact tiles | {precision} | {largest:.2e} | "
                    f"{flips:.2e} | |")
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=1000, help="demo training steps (default: 1000, as make demo)")
    parser.add_argument("--tile", default="80,150,150", help="m36 input tile z,y,x")
    parser.add_argument("--nets", default="m36,unet,demo",
                        help="which of m36, unet, demo (emulated 16-bit types run m36's 80-channel layers far too "
                             "slowly: leave it out there)")
    parser.add_argument("--skip-demo", action="store_true", help="no training: m36 and the U-Net only")
    parser.add_argument("--train-in", default="bfloat16,float16",
                        help="precisions the demo net is also trained in (beside float32), where the device runs them")
    args = parser.parse_args()
    nets = set(args.nets.split(",")) - ({"demo"} if args.skip_demo else set())
    device = torch.device(args.device)
    precisions = runnable(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; precisions here: {', '.join(precisions)}")
    tile = tuple(int(v) for v in args.tile.split(","))
    accuracy, speed = m36_rows(device, precisions, tile) if "m36" in nets else ([], [])
    accuracy += unet_rows(device, precisions) if "unet" in nets else []
    if "demo" in nets:
        with tempfile.TemporaryDirectory() as name:
            accuracy += demo_rows(device, precisions, args.steps, Path(name), args.train_in.split(","))
    print("\n| net | precision | max abs dp vs float32 | argmax flips | score |\n|---|---|---|---|---|")
    print("\n".join(accuracy))
    if speed:
        print("\n| engine | precision | time | rate |\n|---|---|---|---|")
        print("\n".join(speed))


if __name__ == "__main__":
    main()
