"""End to end on synthetic EM data: generate, train, build a larger prediction net, predict, score.

    densepred demo --out demo       (what ``make demo`` runs)

Steps: write a training volume and a larger held-out test volume (HDF5); train a small
anisotropic 3D membrane detector on the CPU; rebuild it with a larger tile and MFP from its
LAST weights (``create_prediction_net``); predict the test volume with mirroring so the
output covers it whole; print per-voxel accuracy and membrane F1; draw raw | prediction |
truth for a few sections.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

from ..io.synthetic import em_volume
from ..networks import create_prediction_net
from ..running import predict_dense, train
from .values import positive_int

DEMO_CONFIG = """\
# A small anisotropic 3D membrane detector (z is coarser than y, x).
name = "membranes"
save_dir = "run"

[network]
dims = 3
in_channels = 1
n_classes = 2
activation = "relu"
layers = [
  {{ filters = 16, kernel = [1, 4, 4], pool = [1, 2, 2] }},
  {{ filters = 24, kernel = [1, 3, 3] }},
  {{ filters = 32, kernel = 3 }},
  {{ filters = 32, kernel = 3 }},
]

[training]
data = [{{ raw = "train.h5:raw", label = "train.h5:label" }}]
validation = [{{ raw = "validation.h5:raw", label = "validation.h5:label" }}]
patch_size = [9, 47, 47]
batch_size = 8
steps = {steps}
lr = 0.003
lr_schedule = "cosine"
save_every = 100
validate_every = 100
validation_patches = 32
grey_jitter = 0.1
seed = 0

[prediction]
tile_shape = [24, 128, 128]
mode = "mfp"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--steps", type=positive_int, default=1000, help="training steps (default: 1000)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    print(f"[1/4] synthetic EM volumes -> {out}")
    config = write_example(out, args.steps)

    print(f"[2/4] training {config.name} for {args.steps} steps on the CPU")
    if _trained(out):
        print(f"      continuing the run in {out / 'run'} (delete it to start afresh)")
    train(config, resume=_trained(out), steps=args.steps, device="cpu")

    print("[3/4] prediction net with a larger tile and MFP, predicting the test volume (mirrored)")
    net = create_prediction_net(config, mode="mfp")
    with h5py.File(out / "test.h5") as f:
        t0 = time.perf_counter()
        probabilities = predict_dense(net, f["raw"], mirror=True, device="cpu", progress=True)
        seconds = time.perf_counter() - t0
        raw, truth = f["raw"][...], f["label"][...]
    with h5py.File(out / "prediction.h5", "w") as f:
        f.create_dataset("membrane", data=probabilities[1], chunks=True, compression="gzip")
    print(f"      {truth.size:,} voxels in {seconds:.1f} s ({truth.size / seconds:,.0f} voxels/s), "
          f"tile {list(net.tile_shape)}")

    print("[4/4] scores on the held-out test volume")
    scores = membrane_scores(probabilities[1] > 0.5, truth.astype(bool))
    for key, value in scores.items():
        print(f"      {key:10s} {value:.3f}")
    png = out / "demo.png"
    draw(raw, probabilities[1], truth, png)
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Outputs in {out}:")
    print(f"  {out / 'run'}/membranes-LAST.safetensors, -BEST.safetensors, history.csv, history.png")
    print(f"  {out / 'prediction.h5'} (membrane probability), {png} (raw | prediction | truth)")
    return 0


def write_example(out: Path, steps: int, test_shape: tuple[int, int, int] = (40, 256, 256)) -> Path:
    """Training, validation and test volumes (HDF5) and the membrane net's config, in ``out``."""
    for name, shape, seed in (("train", (32, 160, 160), 1), ("validation", (16, 96, 96), 2), ("test", test_shape, 3)):
        raw, label = em_volume(shape, seed=seed)
        with h5py.File(out / f"{name}.h5", "w") as f:
            f.create_dataset("raw", data=raw, chunks=True, compression="gzip")
            f.create_dataset("label", data=label, chunks=True, compression="gzip")
    config = out / "membranes.toml"
    config.write_text(DEMO_CONFIG.format(steps=steps))
    return config


def _trained(out: Path) -> bool:
    return (out / "run" / "membranes-LAST.safetensors").exists()


def membrane_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-voxel accuracy, and precision, recall and F1 of the membrane class."""
    tp = float(np.sum(predicted & truth))
    fp = float(np.sum(predicted & ~truth))
    fn = float(np.sum(~predicted & truth))
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"accuracy": float(np.mean(predicted == truth)), "precision": precision,
            "recall": recall, "F1": f1}


def draw(raw: np.ndarray, membrane: np.ndarray, truth: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    sections = np.linspace(4, raw.shape[0] - 5, 3).astype(int)
    fig = Figure(figsize=(9, 3 * len(sections)), layout="tight")
    axes = fig.subplots(len(sections), 3)
    for row, z in zip(axes, sections, strict=True):
        for ax, image, title, cmap in zip(row, (raw[z], membrane[z], truth[z]),
                                          ("raw", "membrane probability", "truth"),
                                          ("gray", "magma", "magma"), strict=True):
            ax.imshow(image, cmap=cmap, vmin=0, vmax=255 if title == "raw" else 1)
            ax.set_title(f"{title}, z = {z}", fontsize=9)
            ax.axis("off")
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    raise SystemExit(main())
