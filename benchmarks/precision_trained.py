"""Each precision's error on trained nets: a 2D membrane net trained on real electron
microscopy, and a model package from the BioImage Model Zoo.

The data is the ISBI 2012 segmentation challenge's training stack (serial-section TEM of the
Drosophila larva ventral nerve cord, 30 sections of 512 x 512, 4 x 4 x 50 nm, with membrane
labels; Arganda-Carreras et al. 2015, doi:10.3389/fnana.2015.00142), as a folder holding
``image/N.png`` and ``label/N.png`` (N = 0..29; e.g. ``data/membrane/train`` of
github.com/zhixuhao/unet). Labels are 0 on membranes, 255 inside cells.

Sections 0-19 train a small 2D net with densepred's trainer (float32), 20-24 validate, 25-29
are predicted (mirrored, MFP) in float32 and in every other precision the device runs; each
prediction is compared with float32's (max |dp|, share of argmax flips) and scored against the
labels (membrane F1). On a CPU without bfloat16 or float16 instructions,
``DENSEPRED_EMULATE_PRECISION=1`` runs them through PyTorch's generic kernels (the same
arithmetic; their times say nothing about speed).

``--zoo RDF`` predicts a bioimage.io package's own test input in every precision the same way
(its weights as trained; e.g. ``example_descriptions/models/unet2d_nuclei_broad`` of
github.com/bioimage-io/spec-bioimage-io, a 2D U-Net for nuclei with TorchScript weights; a
one-channel output's flips are voxels on the other side of 0.5).

    DENSEPRED_EMULATE_PRECISION=1 python benchmarks/precision_trained.py --data unet/data/membrane/train
    DENSEPRED_EMULATE_PRECISION=1 python benchmarks/precision_trained.py --zoo unet2d_nuclei_broad/rdf.yaml

Prints a Markdown table for docs/PRECISION.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from matplotlib.image import imread

import densepred
from densepred.interfaces.demo import membrane_scores
from densepred.networks.precision import runnable_precisions
from densepred.running.training import read_history

CONFIG = """name = "em2d"
save_dir = "run"

[network]
dims = 2
in_channels = 1
n_classes = 2
activation = "relu"
layers = [
  {{ filters = 16, kernel = 5, pool = 2 }},
  {{ filters = 32, kernel = 4, pool = 2 }},
  {{ filters = 48, kernel = 3 }},
  {{ filters = 48, kernel = 3 }},
]

[training]
data = [{{ raw = "train.h5:raw", label = "train.h5:label" }}]
validation = [{{ raw = "validation.h5:raw", label = "validation.h5:label" }}]
patch_size = [98, 98]
batch_size = 8
steps = {steps}
lr = 0.003
lr_schedule = "cosine"
save_every = 250
validate_every = 250
validation_patches = 32
grey_jitter = 0.1
seed = 0

[prediction]
tile_shape = [257, 257]
mode = "mfp"
"""


def read_stack(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sections as uint8 ``(30, 512, 512)`` and their membrane masks (label below 128)."""
    names = sorted((folder / "image").glob("*.png"), key=lambda p: int(p.stem))
    if not names:
        raise SystemExit(f"no image/N.png under {folder}")
    raw = np.stack([_grey(p) for p in names])
    labels = np.stack([_grey(folder / "label" / p.name) < 128 for p in names])
    return raw, labels


def _grey(path: Path) -> np.ndarray:
    """A PNG as uint8 (matplotlib reads 8-bit PNGs as floats in [0, 1])."""
    image = imread(path)
    image = image[..., 0] if image.ndim == 3 else image
    return np.rint(image * 255).astype(np.uint8) if image.dtype.kind == "f" else image.astype(np.uint8)


def write_data(work: Path, raw: np.ndarray, membranes: np.ndarray, steps: int) -> Path:
    parts = {"train": slice(0, 20), "validation": slice(20, 25), "test": slice(25, 30)}
    for name, rows in parts.items():
        with h5py.File(work / f"{name}.h5", "w") as f:
            f["raw"] = raw[rows]
            f["label"] = membranes[rows].astype(np.uint8)
    config = work / "em2d.toml"
    config.write_text(CONFIG.format(steps=steps))
    return config


def em_rows(folder: Path, steps: int, device: torch.device, precisions: list[str]) -> list[str]:
    """The 2D net trained on the EM stack in ``folder``: each precision against float32."""
    raw, membranes = read_stack(folder)
    with tempfile.TemporaryDirectory() as name:
        config = write_data(Path(name), raw, membranes, steps)
        start = time.perf_counter()
        densepred.train(config, device=device, progress=False)
        history = read_history(Path(name) / "run" / "history.csv")
        best = min(r["val_loss"] for r in history if r["val_loss"] is not None)
        print(f"trained {steps} steps in float32: {time.perf_counter() - start:.0f} s, best validation loss {best:.4f}")
        net = densepred.create_prediction_net(config, mode="mfp")
    test, truth = raw[25:30], membranes[25:30]
    what = f"2D membrane net trained on ISBI 2012 ssTEM ({steps} steps), 5 held-out sections of 512x512"
    return compared(what, precisions, lambda p: densepred.predict_dense(net, test, mirror=True, device=device,
                                                                       precision=p),
                    lambda p: f"membrane F1 {membrane_scores(p[1] > 0.5, truth)['F1']:.4f}")


def zoo_rows(rdf: Path, device: torch.device, precisions: list[str]) -> list[str]:
    """A bioimage.io package's test input: each precision against float32."""
    net = densepred.from_bioimageio(rdf)
    image = np.load(rdf.parent / "test_input.npy").astype(np.float32).squeeze()
    what = f"bioimage.io {rdf.parent.name} (as trained), its test input {'x'.join(map(str, image.shape))}"
    return compared(what, precisions, lambda p: densepred.predict_dense(net, image, device=device, precision=p),
                    lambda p: "")


def compared(what: str, precisions: list[str], predict, score) -> list[str]:
    """Rows of each precision's prediction against float32's (the first): max |dp|, the share
    of voxels whose class changes (for one channel: which side of 0.5), a score, seconds."""
    rows, reference = [], None
    for precision in precisions:
        start = time.perf_counter()
        p = predict(precision)
        seconds = time.perf_counter() - start
        reference = p if reference is None else reference
        largest = float(np.abs(p - reference).max())
        labels = (lambda q: q[0] > 0.5) if p.shape[0] == 1 else (lambda q: q.argmax(0))
        flips = float(np.mean(labels(p) != labels(reference)))
        rows.append(f"| {what} | {precision} | {largest:.2e} | {flips:.2e} | {score(p)} | {seconds:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder with image/N.png and label/N.png (ISBI 2012)")
    parser.add_argument("--zoo", type=Path, help="a bioimage.io package's rdf.yaml (unpacked, with test_input.npy)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps in float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if not args.data and not args.zoo:
        parser.error("give --data, --zoo or both")
    device = torch.device(args.device)
    precisions = runnable_precisions(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"precisions: {', '.join(precisions)}")
    rows = em_rows(args.data, args.steps, device, precisions) if args.data else []
    rows += zoo_rows(args.zoo, device, precisions) if args.zoo else []
    print("\n| net | precision | max abs dp vs float32 | class flips | score | seconds |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
