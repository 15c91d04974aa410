"""Training from a config: what a run leaves in ``save_dir`` and how it resumes.

``save_dir`` receives:

* ``<name>-LAST.safetensors``: the net's ``state_dict`` every ``save_every`` steps and at the
  end (atomically: temporary file, then rename), with the step in its metadata;
  ``<name>-LAST.optimizer.safetensors`` beside it holds the optimizer state for ``--resume``
* ``<name>-BEST.safetensors``: the weights with the lowest validation loss so far
* ``<name>.toml``: the config as trained (paths made absolute, ``save_dir = "."``)
* ``history.csv`` (step, seconds, train_loss, val_loss, val_accuracy, lr) and ``history.png``

Each step draws its samples from a generator seeded by ``(seed, step)``, so a resumed run
draws the same patches as an uninterrupted one. Ctrl-C saves LAST and returns.
"""

from __future__ import annotations

import csv
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, load_config, set_values
from ..errors import DensePredError
from ..files import atomic_write_text
from ..io import ArraySpec
from ..networks import DenseNet, build_net
from ..networks.weights import (
    best_path,
    last_path,
    load_optimizer,
    load_weights,
    optimizer_path,
    save_optimizer,
    save_weights,
)
from .devices import resolve_device
from .samplers import augmentation_for, build_samplers

log = logging.getLogger("densepred")
HISTORY_FIELDS = ("step", "seconds", "train_loss", "val_loss", "val_accuracy", "lr")


@dataclass
class TrainResult:
    step: int
    save_dir: Path
    last: Path
    best: Path | None
    best_val_loss: float | None
    interrupted: bool


def train(config: Config | str | Path, *, resume: bool = False, steps: int | None = None,
          device: str | torch.device | None = None, progress: bool = True) -> TrainResult:
    """Train the config's network on its ``[training]`` data.

    Example:
        >>> result = densepred.train("membranes.toml", steps=2000)   # doctest: +SKIP
        >>> net = densepred.create_prediction_net("membranes.toml")  # loads result.last
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    if cfg.training is None:
        raise DensePredError(f"{cfg.path or 'the config'} has no [training] section")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise DensePredError(f"steps = {steps!r} is invalid; expected a positive integer")
    run = _Run(cfg, steps or cfg.training.steps, resolve_device(device), resume)
    return run.loop(progress)


class _Run:
    def __init__(self, cfg: Config, steps: int, device: torch.device, resume: bool):
        assert cfg.training is not None
        assert cfg.save_dir is not None
        self.cfg, self.training, self.steps, self.device = cfg, cfg.training, steps, device
        self.save_dir = cfg.save_dir
        self.last = last_path(self.save_dir, cfg.name)
        self.best = best_path(self.save_dir, cfg.name)
        self.optimizer_file = optimizer_path(self.save_dir, cfg.name)
        self.history_file = self.save_dir / "history.csv"
        torch.manual_seed(self.training.seed)
        self.net: DenseNet = build_net(cfg).to(device)
        self.sampler, self.validation = build_samplers(cfg, self.net.geometry)
        self.augmentation = augmentation_for(self.training, self.net.geometry)
        self.optimizer = self._optimizer()
        weights = self.training.class_weights
        self.class_weights = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
        self.history: list[dict[str, Any]] = []
        self.start, self.best_loss = 0, math.inf
        if resume:
            self._resume()
        elif self.last.exists():
            raise DensePredError(f"{self.last} exists; pass --resume to continue that run, or choose "
                                 "another save_dir (or delete it) to start afresh")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.save_dir / f"{cfg.name}.toml", trained_config_text(cfg))

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.training
        if t.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return torch.optim.Adam(self.net.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _resume(self) -> None:
        if not self.last.exists():
            raise DensePredError(f"cannot resume: {self.last} does not exist; start without --resume")
        metadata = load_weights(self.net, self.last)
        self.start = int(metadata.get("step", 0))
        if self.optimizer_file.exists():
            saved_at = load_optimizer(self.optimizer, self.optimizer_file)
            if saved_at != self.start:
                log.warning("optimizer state is from step %d but LAST from step %d; restarting the optimizer",
                            saved_at, self.start)
                self.optimizer = self._optimizer()
        self.history = [row for row in read_history(self.history_file) if row["step"] <= self.start]
        losses = [row["val_loss"] for row in self.history if row["val_loss"] is not None]
        self.best_loss = min(losses, default=math.inf)
        if self.start > self.steps:
            log.warning("LAST is at step %d, already past steps = %d; nothing to train", self.start, self.steps)

    def lr(self, step: int) -> float:
        t = self.training
        if t.lr_schedule == "step":
            return t.lr * t.lr_decay ** (step // t.lr_step)
        if t.lr_schedule == "cosine":
            return t.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps))
        return t.lr

    def loop(self, progress: bool) -> TrainResult:
        seconds0 = self.history[-1]["seconds"] if self.history else 0.0
        clock0 = time.perf_counter()
        bar = _bar(progress, self.start, self.steps)
        step, losses = self.start, []
        try:
            with StopOnInterrupt() as stop:
                while step < self.steps and not stop.requested:
                    loss = self.train_step(step + 1)
                    step += 1
                    losses.append(loss)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}")
                    if step % self.training.validate_every == 0 or step == self.steps:
                        seconds = seconds0 + time.perf_counter() - clock0
                        self.record(step, seconds, float(np.mean(losses)))
                        losses = []
                    if step % self.training.save_every == 0 or step == self.steps:
                        self.save(step)
                if stop.requested:
                    self.save(step)
                    log.warning("interrupted at step %d; LAST saved to %s (continue with --resume)",
                                step, self.last)
        finally:
            if bar is not None:
                bar.close()
        best = self.best if self.best.exists() else None
        return TrainResult(step, self.save_dir, self.last, best,
                           None if math.isinf(self.best_loss) else self.best_loss, stop.requested)

    def train_step(self, step: int) -> float:
        rng = np.random.default_rng([self.training.seed, step])
        torch.manual_seed(self.training.seed * 1_000_003 + step)
        x, y = self.sampler.sample(rng, self.training.batch_size, self.augmentation)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        self.net.train()
        logits = self.net(torch.from_numpy(x).to(self.device))
        loss = self.loss(logits, torch.from_numpy(y).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DensePredError(f"the training loss became {value} at step {step}; lower training.lr "
                                 f"(now {self.training.lr}) or check the data")
        return value

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 1 and logits.ndim > 2:  # one label per patch: a 1-voxel output grid
            logits = logits.reshape(logits.shape[0], logits.shape[1])
        ignore = self.training.ignore_label if self.training.ignore_label is not None else -100
        return F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=ignore)

    def validate(self) -> tuple[float, float] | None:
        if self.validation is None:
            return None
        rng = np.random.default_rng([self.training.seed, 2**31])  # the same patches every time
        if hasattr(self.validation, "all"):
            x, y = self.validation.all()
        else:
            x, y = self.validation.sample(rng, self.training.validation_patches)
        self.net.eval()
        total_loss, correct, counted = 0.0, 0, 0
        with torch.no_grad():
            for first in range(0, len(x), self.training.batch_size):
                xb = torch.from_numpy(x[first:first + self.training.batch_size]).to(self.device)
                yb = torch.from_numpy(y[first:first + self.training.batch_size]).to(self.device)
                logits = self.net(xb)
                total_loss += float(self.loss(logits, yb)) * len(xb)
                if yb.ndim == 1 and logits.ndim > 2:
                    logits = logits.reshape(logits.shape[0], logits.shape[1])
                keep = yb != (self.training.ignore_label if self.training.ignore_label is not None else -100)
                correct += int((logits.argmax(1) == yb)[keep].sum())
                counted += int(keep.sum())
        return total_loss / len(x), correct / max(counted, 1)

    def record(self, step: int, seconds: float, train_loss: float) -> None:
        validation = self.validate()
        val_loss, val_accuracy = validation if validation is not None else (None, None)
        self.history.append({"step": step, "seconds": round(seconds, 3), "train_loss": train_loss,
                             "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": self.lr(step)})
        write_history(self.history_file, self.history)
        score = val_loss if val_loss is not None else train_loss
        if score < self.best_loss:
            self.best_loss = score
            save_weights(self.net, self.best, {"step": step, "score": score, "name": self.cfg.name})

    def save(self, step: int) -> None:
        save_optimizer(self.optimizer, self.optimizer_file, step)
        save_weights(self.net, self.last, {"step": step, "name": self.cfg.name})
        if self.history:
            plot_history(self.history, self.save_dir / "history.png", self.cfg.name)


def trained_config_text(cfg: Config) -> str:
    """The config as trained, to be stored in save_dir: data paths absolute, save_dir '.'.

    Edited from the config file's own text when there is one, so its comments stay.
    """
    values: dict[str, Any] = {"name": cfg.name, "save_dir": "."}
    training = cfg.source.get("training", {})
    for key in ("data", "validation"):
        if key in training:
            values[f"training.{key}"] = [
                {side: str(ArraySpec.parse(spec, cfg.base_dir)) for side, spec in pair.items()}
                for pair in training[key]]
    source = cfg.path.read_text(encoding="utf-8") if cfg.path is not None and cfg.path.is_file() else cfg.source
    header = "# The config this run was trained with (written by densepred train).\n"
    return header + set_values(source, values)


class StopOnInterrupt:
    """Turns the first Ctrl-C into a request to stop after the current step (so a save is
    never cut in half); a second Ctrl-C interrupts at once. Main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({key: (None if row[key] in ("", None) else
                               (int(row[key]) if key == "step" else float(row[key]))) for key in HISTORY_FIELDS})
    return rows


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(HISTORY_FIELDS)]
    for row in rows:
        lines.append(",".join("" if row[key] is None else f"{row[key]:.6g}" if isinstance(row[key], float)
                              else str(row[key]) for key in HISTORY_FIELDS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_history(rows: list[dict[str, Any]], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(steps, [r["train_loss"] for r in rows], label="train loss")
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), label="validation loss")
        ax_acc.plot(*zip(*[(r["step"], r["val_accuracy"]) for r in rows if r["val_accuracy"] is not None],
                         strict=True), color="tab:green")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title=f"{name}: loss", yscale="log")
    ax_loss.legend()
    ax_acc.set(xlabel="step", ylabel="accuracy", title="validation accuracy")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def _bar(enabled: bool, start: int, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="train")
