"""Training from a config: what a run leaves in ``save_dir`` and how it resumes.

``save_dir`` receives:

* ``<name>-LAST.safetensors``: the net's ``state_dict`` every ``save_every`` steps and at the
  end (atomically: temporary file, then rename), with the step in its metadata;
  ``<name>-LAST.optimizer.safetensors`` beside it holds the optimizer state for ``--resume``
* ``<name>-BEST.safetensors``: the weights with the lowest validation loss so far
* ``<name>.toml``: the config as trained (paths made absolute, ``save_dir = "."``); where that
  is the user's own config, ``<name>.trained.toml`` instead
* ``history.csv`` (step, seconds, train_loss, val_loss, val_accuracy, lr) and ``history.png``
  (:mod:`.history`)

Each step draws its samples from a generator seeded by ``(seed, step)``, so a resumed run
draws the same patches as an uninterrupted one. Ctrl-C, SIGTERM and SIGHUP save LAST after the
current step; then Ctrl-C returns (``interrupted``), while SIGTERM and SIGHUP reach the caller as
it arranged (its own handler, or the default, which ends the process): a script a batch system
cancels does not go on to its next step.
"""

from __future__ import annotations

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

from ...config import Config, load_config
from ...errors import DensePredError
from ...files import atomic_write_text
from ...networks import DenseNet, build_net
from ...networks.caller_state import rng_kept
from ...networks.devices import resolve_device
from ...networks.precision import FLOAT32, Precision, autocast, precision_for
from ...networks.weights import (
    best_path,
    last_path,
    load_optimizer,
    load_weights,
    optimizer_path,
    read_safetensors,
    save_optimizer,
    save_weights,
    saved_optimizer_kind,
)
from .history import HistoryPlot, read_history, write_history
from .samplers import augmentation_for, build_samplers
from .save_dir import trained_config_path, trained_config_text, training_lock

log = logging.getLogger("densepred")


class _Window:
    """Training losses since the last record; skipped batches (nothing labelled) counted apart."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.skipped = 0
        self.last_text = "-"

    def add(self, loss: float | None) -> None:
        if loss is None:
            self.skipped += 1
            self.last_text = "skipped"
        else:
            self.losses.append(loss)
            self.last_text = f"{loss:.4f}"

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None


@dataclass
class TrainResult:
    step: int
    save_dir: Path
    last: Path
    best: Path | None
    best_val_loss: float | None
    interrupted: bool


def train(config: Config | str | Path, *, resume: bool = False, steps: int | None = None,
          device: str | torch.device | None = None, progress: bool = True,
          precision: str = "float32") -> TrainResult:
    """Train the config's network on its ``[training]`` data.

    ``precision``: ``float32`` (the default), ``tf32``, or mixed precision: ``bfloat16`` or
    ``float16`` forwards under ``torch.autocast`` (float16 with a gradient scaler); the weights,
    the optimizer and the loss stay float32.

    Example:
        >>> result = densepred.train("membranes.toml", steps=2000)   # doctest: +SKIP
        >>> net = densepred.create_prediction_net("membranes.toml")  # loads result.last
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    if cfg.training is None:
        raise DensePredError(f"{cfg.path or 'the config'} has no [training] section")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise DensePredError(f"steps = {steps!r} is invalid; expected a positive integer")
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, bool):
            raise DensePredError(f"{name} = {value!r} is invalid; expected True or False")
    device = resolve_device(device)
    checked = precision_for(precision, device)
    with training_lock(cfg), rng_kept(device):  # seeded for the run; the caller's random state kept
        run = _Run(cfg, steps or cfg.training.steps, device, resume, checked)
        try:
            return run.loop(progress)
        finally:  # the data files close now: torch's and matplotlib's first calls leave garbage cycles
            run.sampler = run.validation = None  # whose frames keep the run until the collector runs


class _Run:
    def __init__(self, cfg: Config, steps: int, device: torch.device, resume: bool, precision: Precision = FLOAT32):
        assert cfg.training is not None
        assert cfg.save_dir is not None
        self.cfg, self.training, self.steps, self.device = cfg, cfg.training, steps, device
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "float16")
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
            raise DensePredError(f"{self.last} exists; resume that run (densepred train --resume, "
                                 "densepred.train(..., resume=True)), or choose another save_dir (or delete it) "
                                 "to start afresh")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(trained_config_path(cfg, self.save_dir), trained_config_text(cfg))

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.training
        if t.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return torch.optim.Adam(self.net.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _resume(self) -> None:
        """Continue from LAST. What a resume may change: steps, lr and its schedule, weight_decay,
        momentum, class weights, data, batch size, augmentation (all applied from the config).
        Refused: another network (the weights do not fit) or another optimizer (its state does not)."""
        if not self.last.exists():
            raise DensePredError(f"cannot resume: {self.last} does not exist; start without --resume")
        metadata = load_weights(self.net, self.last)
        self.start = int(metadata.get("step", 0))
        if self.optimizer_file.exists():
            saved = saved_optimizer_kind(self.optimizer_file)
            if saved != self.training.optimizer:
                raise DensePredError(
                    f"cannot resume with optimizer = \"{self.training.optimizer}\": {self.optimizer_file} holds "
                    f"{saved} state; keep optimizer = \"{saved}\", or train a new run (another save_dir)")
            saved_at = load_optimizer(self.optimizer, self.optimizer_file)
            if saved_at != self.start:
                log.warning("optimizer state is from step %d but LAST from step %d; restarting the optimizer",
                            saved_at, self.start)
                self.optimizer = self._optimizer()
            self._apply_hyperparameters()
        self.history = [row for row in read_history(self.history_file) if row["step"] <= self.start]
        self.best_loss = self._best_score()
        if self.start > self.steps:
            log.warning("LAST is at step %d, already past steps = %d; nothing to train", self.start, self.steps)

    def _apply_hyperparameters(self) -> None:
        """The config's weight decay and momentum win over those saved with the optimizer state."""
        wanted = {"weight_decay": self.training.weight_decay}
        if self.training.optimizer == "sgd":
            wanted["momentum"] = self.training.momentum
        for group in self.optimizer.param_groups:
            for key, value in wanted.items():
                if group.get(key) != value:
                    log.warning("resuming with %s = %g (it was %g)", key, value, group.get(key))
                    group[key] = value

    def _best_score(self) -> float:
        """The score BEST was saved with (validation loss, or training loss without validation)."""
        if not self.best.exists():
            return math.inf
        try:
            return float(read_safetensors(self.best)[1].get("score", math.inf))
        except ValueError as exc:  # DensePredError too: a damaged file
            log.warning("%s cannot be read (%s); the next validation replaces it", self.best, exc)
            return math.inf

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
        step, window = self.start, _Window()
        plots = HistoryPlot(self.save_dir / "history.png", self.cfg.name)
        try:
            with StopOnInterrupt() as stop:
                while step < self.steps and not stop.requested:
                    step += 1
                    window.add(self.train_step(step))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=window.last_text)
                    if step % self.training.validate_every == 0 or step == self.steps:
                        self.record(step, seconds0 + time.perf_counter() - clock0, window)
                        window = _Window()
                    if step % self.training.save_every == 0 or step == self.steps:
                        self.save(step, plots, final=step == self.steps)
                if stop.requested:
                    self.save(step, plots, final=True)
                    log.warning("interrupted at step %d; LAST saved to %s (continue with --resume)",
                                step, self.last)
        finally:
            if bar is not None:
                bar.close()
        best = self.best if self.best.exists() else None
        return TrainResult(step, self.save_dir, self.last, best,
                           None if math.isinf(self.best_loss) else self.best_loss, stop.requested)

    def train_step(self, step: int) -> float | None:
        """One optimizer step; None (and no step) for a batch without a labelled voxel of weight > 0:
        sparse annotation leaves such batches, and their loss would be 0/0."""
        rng = np.random.default_rng([self.training.seed, step])
        torch.manual_seed(self.training.seed * 1_000_003 + step)
        x, y = self.sampler.sample(rng, self.training.batch_size, self.augmentation)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        self.net.train()
        with autocast(self.precision, self.device):
            logits = self.net(torch.from_numpy(x).to(self.device))
        total, weight = self.loss_sum(logits.float(), torch.from_numpy(y).to(self.device))
        if float(weight) == 0:
            return None
        loss = total / weight
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DensePredError(f"the training loss became {value} at step {step}; lower training.lr "
                                 f"(now {self.training.lr}) or check the data")
        return value

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-weighted cross-entropy summed over labelled voxels, and the sum of their weights
        (their ratio is PyTorch's weighted mean; a weight of 0 means nothing was labelled)."""
        if labels.ndim == 1 and logits.ndim > 2:  # one label per patch: a 1-voxel output grid
            logits = logits.reshape(logits.shape[0], logits.shape[1])
        keep = self._labelled(labels)
        safe = torch.where(keep, labels, torch.zeros_like(labels))
        per_voxel = F.cross_entropy(logits, safe, reduction="none")
        weights = keep.to(per_voxel.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights[safe]
        return (per_voxel * weights).sum(), weights.sum()

    def _labelled(self, labels: torch.Tensor) -> torch.Tensor:
        ignore = self.training.ignore_label
        return labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)

    def validate(self) -> tuple[float | None, float | None] | None:
        """Mean validation loss and accuracy over labelled voxels (None where none is labelled)."""
        if self.validation is None:
            return None
        rng = np.random.default_rng([self.training.seed, 2**31])  # the same patches every time
        if hasattr(self.validation, "all"):
            x, y = self.validation.all()
        else:
            x, y = self.validation.sample(rng, self.training.validation_patches)
        self.net.eval()
        total_loss, total_weight, correct, counted = 0.0, 0.0, 0, 0
        with torch.no_grad():
            for first in range(0, len(x), self.training.batch_size):
                xb = torch.from_numpy(x[first:first + self.training.batch_size]).to(self.device)
                yb = torch.from_numpy(y[first:first + self.training.batch_size]).to(self.device)
                with autocast(self.precision, self.device):
                    logits = self.net(xb)
                loss, weight = self.loss_sum(logits.float(), yb)
                total_loss, total_weight = total_loss + float(loss), total_weight + float(weight)
                if yb.ndim == 1 and logits.ndim > 2:
                    logits = logits.reshape(logits.shape[0], logits.shape[1])
                keep = self._labelled(yb)
                correct += int((logits.argmax(1) == yb)[keep].sum())
                counted += int(keep.sum())
        return (total_loss / total_weight if total_weight else None), (correct / counted if counted else None)

    def record(self, step: int, seconds: float, window: _Window) -> None:
        validation = self.validate()
        val_loss, val_accuracy = validation if validation is not None else (None, None)
        train_loss = window.mean
        self.history.append({"step": step, "seconds": round(seconds, 3), "train_loss": train_loss,
                             "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": self.lr(step),
                             "skipped_batches": window.skipped})
        write_history(self.history_file, self.history)
        if window.skipped:
            log.info("%d of the last %d batches had no labelled voxel and were skipped", window.skipped,
                     window.skipped + len(window.losses))
        score = val_loss if val_loss is not None else train_loss
        if score is not None and score < self.best_loss:
            self.best_loss = score
            save_weights(self.net, self.best, {"step": step, "score": score, "name": self.cfg.name})

    def save(self, step: int, plots: HistoryPlot, final: bool = False) -> None:
        save_optimizer(self.optimizer, self.optimizer_file, step)
        save_weights(self.net, self.last, {"step": step, "name": self.cfg.name})
        plots.update(self.history, final)


class StopOnInterrupt:
    """Turns the first Ctrl-C (SIGINT), SIGTERM (a batch system's cancel or time limit, which
    kills a few seconds later) or SIGHUP (the session closed) into a request to stop after the
    current step, so LAST is saved at it and a save is never cut in half; a second one
    interrupts at once. When the block has ended (LAST saved), the caller's handlers are back
    and a SIGTERM or SIGHUP is raised again for them: the process ends, or the caller's own
    handler runs, as it would have without densepred. Main thread only."""

    SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
    PASSED_ON = tuple(s for s in SIGNALS if s != signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None  # the first one received
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                if signal.getsignal(number) is not signal.SIG_IGN:  # nohup's stays ignored
                    previous = signal.signal(number, self._handle)
                    self._previous[number] = signal.SIG_DFL if previous is None else previous  # None: set in C
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested, self.signal = True, signum
        for number in self._previous:
            signal.signal(number, _interrupt_now)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if kind is None and self.signal in self.PASSED_ON:
            signal.raise_signal(self.signal)


def _interrupt_now(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _bar(enabled: bool, start: int, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="train")
