"""A 2D network trained on a z-stack and predicted over a TIFF stack, checked slice by slice.

Writes synthetic EM stacks (one HDF5 dataset each for training, one TIFF for testing), trains a
2D membrane detector on the training stack (one data entry: its slices are sampled), predicts
the TIFF stack with `densepred predict` into an OME-Zarr, and compares it with `predict_dense`
applied to every slice on its own; prints max |difference|, accuracy and membrane F1.

    python benchmarks/stack_2d.py --work /tmp/dp-stack --steps 600
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import tifffile

import densepred
from densepred.interfaces.demo import membrane_scores
from densepred.io.arrays import open_array
from densepred.io.synthetic import em_volume

CONFIG = """name = "stack2d"
save_dir = "run"

[network]
dims = 2
in_channels = 1
n_classes = 2
class_names = ["cell", "membrane"]
layers = [
  {{ filters = 16, kernel = 4, pool = 2 }},
  {{ filters = 24, kernel = 3 }},
  {{ filters = 32, kernel = 3 }},
]

[training]
data = [{{ raw = "train.h5:raw", label = "train.h5:label" }}]
patch_size = 47
batch_size = 8
steps = {steps}
lr = 0.003
lr_schedule = "cosine"
validation_fraction = 0.15
validate_every = 100
save_every = 100
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    raw, label = em_volume((25, 256, 256), seed=1, z_spacing=4.0)
    with h5py.File(args.work / "train.h5", "w") as f:
        f["raw"], f["label"] = raw, label
    test_raw, test_label = em_volume((12, 320, 320), seed=2, z_spacing=4.0)
    tifffile.imwrite(args.work / "test.tif", test_raw)
    config = args.work / "stack2d.toml"
    config.write_text(CONFIG.format(steps=args.steps))

    start = time.perf_counter()
    if (args.work / "run" / "stack2d-LAST.safetensors").exists():
        print("reusing the trained net in", args.work / "run")
    else:
        densepred.train(config, progress=False)
    print(f"trained {args.steps} steps on one stack of 25 slices in {time.perf_counter() - start:.0f} s")

    output = args.work / "test-pred.zarr"
    command = [str(Path(sys.executable).parent / "densepred"), "predict", str(config), "--input",
               str(args.work / "test.tif"), "--output", str(output), "--mirror", "--overwrite", "--quiet"]
    print("$", " ".join(command))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    print(done.stdout.strip(), f"({time.perf_counter() - start:.1f} s)")

    net = densepred.create_prediction_net(config)
    by_slice = np.stack([densepred.predict_dense(net, test_raw[z], mirror=True) for z in range(len(test_raw))],
                        axis=1)
    stored = open_array(str(output))[...]
    print(f"output {list(stored.shape)}; max |densepred predict - predict_dense slice by slice| = "
          f"{np.abs(stored - by_slice).max():.2e}")
    scores = membrane_scores(stored[1] > 0.5, test_label.astype(bool))
    print("held-out stack: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
