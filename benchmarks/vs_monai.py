"""densepred's exact and blended tiling of a U-Net beside MONAI's sliding_window_inference.

The same MONAI ``BasicUNet`` (3D, 1 -> 3 channels, default features) with eval-mode batch norm
(running statistics set to trained-looking values) and with MONAI's default instance norm;
the same random 96x256x256 volume. Every variant runs in its own process, so each peak
resident memory is its own; its output is compared with one whole-volume forward (also its
own process): max |difference| of the softmax probabilities and the share of voxels whose
argmax differs.

MONAI is needed for this benchmark only: ``.venv/bin/pip install monai``.

    python benchmarks/vs_monai.py [--shape 96,256,256] [--roi 64,128,128] [--threads 2]
    python benchmarks/vs_monai.py --shape 64,512,512 --roi 64,320,320 --features 8,8,16,32,64,8 \
        --norms batch --variants whole,exact      # exact over a volume several windows wide
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("whole", "monai-0.25", "monai-0.5", "blend-0.25", "blend-0.5", "exact")


FEATURES = (32, 32, 64, 128, 256, 32)  # BasicUNet's default


def build(norm: str, features: tuple[int, ...] = FEATURES):
    import torch
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    model = BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, norm=norm, features=features)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def run_variant(variant: str, norm: str, volume_path: str, roi: tuple[int, ...], out_path: str,
                threads: int, features: tuple[int, ...]) -> dict:
    import resource

    if not variant.startswith(("whole", "monai")):
        import densepred  # first, as in a user's script: it tunes the allocator
    import torch

    torch.set_num_threads(threads)
    model = build(norm, features)
    volume = np.load(volume_path)
    start = time.perf_counter()
    if variant == "whole":
        with torch.inference_mode():
            result = torch.softmax(model(torch.from_numpy(volume)[None, None]), dim=1)[0].numpy()
    elif variant.startswith("monai"):
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(volume)[None, None], roi, 1, model,
                                              overlap=float(variant.split("-")[1]), mode="gaussian")
            result = torch.softmax(logits, dim=1)[0].numpy()
    else:
        import densepred

        net = densepred.from_torch(model, dims=3, in_channels=1)
        probe = time.perf_counter() - start
        start = time.perf_counter()
        if variant == "exact":
            result = densepred.predict_dense(net, volume, mode="exact", tile_shape=_exact_window(net, roi))
        else:
            result = densepred.predict_dense(net, volume, mode="blend", tile_shape=roi,
                                             overlap=float(variant.split("-")[1]))
    seconds = time.perf_counter() - start
    np.save(out_path, result.astype(np.float32))
    info = {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if not variant.startswith(("whole", "monai")):
        info["probe_s"] = probe
        info["contract"] = net.contract.describe()
        info["huge_pages"] = densepred.system.huge_pages_requested()
    return info


def _exact_window(net, roi):
    """The ROI, grown per axis to the smallest exact window when it is smaller."""
    from densepred.geometry.overlap import smallest_window

    c = net.contract
    return tuple(max(r, smallest_window(f, cr, ctx, m))
                 for r, f, cr, ctx, m in zip(roi, c.factor, c.crop, c.context, c.smallest, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="96,256,256")
    parser.add_argument("--roi", default="64,128,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--norms", default="batch,instance")
    parser.add_argument("--features", default=",".join(map(str, FEATURES)), help="BasicUNet features")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    roi = tuple(int(v) for v in args.roi.split(","))
    features = tuple(int(v) for v in args.features.split(","))
    if args.child:
        variant, norm, volume, out, _ = args.child
        print(json.dumps(run_variant(variant, norm, volume, roi, out, args.threads, features)))
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    voxels = int(np.prod(shape))
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "volume.npy"
        np.save(volume, np.random.default_rng(0).random(shape, dtype=np.float32))
        print(f"volume {args.shape}, window {args.roi}, {args.threads} threads per process, features {features}")
        for norm in args.norms.split(","):
            print(f"\n## BasicUNet, {norm} norm\n")
            print("| variant | seconds | output voxels/s | peak RSS GiB | max abs diff | argmax flips |")
            print("|---|---|---|---|---|---|")
            reference = None
            for variant in args.variants.split(","):
                if variant == "exact" and norm != "batch":
                    continue
                out = Path(tmp) / f"{norm}-{variant}.npy"
                child = subprocess.run([sys.executable, __file__, "--roi", args.roi, "--threads", str(args.threads),
                                        "--features", args.features, "--child", variant, norm, str(volume), str(out),
                                        "x"],
                                       capture_output=True, text=True, check=True)
                info = json.loads(child.stdout.strip().splitlines()[-1])
                result = np.load(out)
                if variant == "whole":
                    reference = result
                diff = float(np.abs(result - reference).max())
                flips = float((result.argmax(0) != reference.argmax(0)).mean())
                print(f"| {variant} | {info['seconds']:.1f} | {voxels / info['seconds']:,.0f} | "
                      f"{info['peak_gib']:.2f} | {diff:.2e} | {flips:.2e} |")
                if "contract" in info and variant == "exact":
                    print(f"\n(probe {info['probe_s']:.1f} s, huge pages {info['huge_pages']}: {info['contract']})\n")


if __name__ == "__main__":
    main()
