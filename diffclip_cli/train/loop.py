"""The training loop every training shares: batches, optimiser steps, schedules, progress.

Two runners over one step: :func:`train_epochs` (shuffled passes over in-memory windows, the
learning rate stepped once per epoch: pretraining, fine-tuning, the linear-head ablation) and
:func:`train_steps` (a fixed number of steps on batches the caller draws, the learning rate
stepped every step: distillation, the cost probe). The caller supplies the forward pass, which
returns a :class:`Step`; the runner takes the optimiser step, keeps the sums the history
records are made of, steps the scheduler (a :mod:`torch.optim.lr_scheduler` one) and reports
one :class:`~diffclip_cli.progress.ProgressEvent` per optimiser step.

The runners draw no random numbers themselves except the epoch's permutation, from the
generator they are given, before the epoch's first batch: the draws of a training are those
of its forward passes, in order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from diffclip_cli.progress import Progress, ProgressEvent

__all__ = ["Step", "WarmupCosineLR", "optimiser_step", "train_epochs", "train_steps"]

log = logging.getLogger("diffclip")


@dataclass
class Step:
    """What one forward pass gives the loop.

    Attributes:
        loss: the scalar to minimise (a mean over ``weight`` samples).
        weight: samples the loss is a mean over; the records' ``loss`` is the mean over all
            samples (``sum(loss * weight) / samples``).
        sums: further per-batch sums (already weighted) whose epoch totals, divided by the
            epoch's samples, become record fields of the same name (e.g. ``train_accuracy``
            from the batch's count of correct labels).
    """

    loss: torch.Tensor
    weight: int = 1
    sums: Mapping[str, float] = field(default_factory=dict)


def optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Clear the gradients, back-propagate ``loss`` and step ``optimizer``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train_epochs(
    model: nn.Module,
    forward: Callable[[torch.Tensor], Step],
    *,
    samples: int,
    batch_size: int,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    generator: torch.Generator,
    stage: str,
    progress: Progress | None = None,
    start: int = 0,
    history: list[dict[str, Any]] | None = None,
    extras: Callable[[], Mapping[str, Any]] | None = None,
    end_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` shuffled passes over ``samples`` windows.

    Each epoch: train mode, a permutation of ``0..samples-1`` drawn from ``generator``, then
    for each batch of ``batch_size`` indices ``forward(index)`` and an optimiser step. After
    the epoch the scheduler steps once and the epoch's record is appended to the history:
    ``epoch``, ``loss`` (mean per sample), the :attr:`Step.sums` fields divided by
    ``samples``, ``extras()``, ``lr`` (the epoch's) and ``seconds``. The model is left in eval
    mode.

    Args:
        model: the module trained (switched to train mode each epoch).
        forward: the batch's forward pass, given the batch's indices.
        samples: windows in an epoch.
        batch_size: windows per step (the last batch may be smaller).
        epochs: epochs in all (the run ends after epoch ``epochs``).
        optimizer: the optimiser.
        scheduler: stepped once after each epoch.
        generator: draws the permutations.
        stage: the progress events' stage.
        progress: called after every optimiser step.
        start: epochs already done (a resumed run).
        history: the records of those epochs (extended in place).
        extras: further record fields, read after each epoch.
        end_epoch: called with the history after each epoch's record (e.g. to write a
            checkpoint), before the epoch's last progress event.

    Returns:
        The history, one record per epoch.
    """
    history = [] if history is None else history
    per_epoch = math.ceil(samples / batch_size)
    total = epochs * per_epoch
    done = start * per_epoch
    for epoch in range(start, epochs):
        tic = time.perf_counter()
        model.train()
        order = torch.randperm(samples, generator=generator)
        sums: dict[str, float] = {}
        loss = 0.0
        for begin in range(0, samples, batch_size):
            out = forward(order[begin : begin + batch_size])
            optimiser_step(optimizer, out.loss)
            loss = float(out.loss.detach())
            sums["loss"] = sums.get("loss", 0.0) + loss * out.weight
            for name, value in out.sums.items():
                sums[name] = sums.get(name, 0.0) + value
            done += 1
            if progress is not None and begin + batch_size < samples:
                progress(ProgressEvent(stage, done, total, loss=loss))
        lr = _lr(optimizer)
        scheduler.step()
        record: dict[str, Any] = {"epoch": epoch + 1,
                                  **{name: value / samples for name, value in sums.items()},
                                  **(extras() if extras is not None else {}),
                                  "lr": lr, "seconds": time.perf_counter() - tic}
        history.append(record)
        log.debug("%s epoch %d/%d loss %.5f", stage, epoch + 1, epochs, record["loss"])
        if end_epoch is not None:
            end_epoch(history)
        if progress is not None:
            progress(ProgressEvent(stage, done, total, loss=loss, record=record))
    model.eval()
    return history


def train_steps(
    model: nn.Module,
    forward: Callable[[int], Step | None],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None,
    stage: str,
    progress: Progress | None = None,
    every: int = 0,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``steps`` steps on batches ``forward(step)`` draws.

    ``forward`` returns ``None`` for a batch with nothing to learn from: no optimiser step is
    taken, the step still counts (and the schedule advances). The scheduler steps after every
    step. The model is left in train mode.

    Args:
        model: the module trained (switched to train mode first).
        forward: the forward pass of step ``0..steps-1``, drawing its own batch.
        steps: steps in all.
        optimizer: the optimiser.
        scheduler: stepped after every step (``None``: a constant learning rate).
        stage: the progress events' stage.
        progress: called after every step.
        every: a history record every ``every`` steps and after the last (0: none):
            ``step``, ``loss`` (mean per sample since the previous record) and ``lr`` (the
            step's).

    Returns:
        The history.
    """
    history: list[dict[str, Any]] = []
    total, seen = 0.0, 0
    model.train()
    for step in range(steps):
        out = forward(step)
        loss = None
        if out is not None:
            optimiser_step(optimizer, out.loss)
            loss = float(out.loss.item())
            total += loss * out.weight
            seen += out.weight
        lr = _lr(optimizer)
        if scheduler is not None:
            scheduler.step()
        record = None
        if every > 0 and ((step + 1) % every == 0 or step + 1 == steps):
            record = {"step": step + 1, "loss": total / max(1, seen), "lr": lr}
            history.append(record)
            total, seen = 0.0, 0
        if progress is not None:
            progress(ProgressEvent(stage, step + 1, steps, loss=loss, record=record))
    return history


class WarmupCosineLR(LRScheduler):
    """A linear warm-up over ``warmup`` steps, then cosine decay to 0 at step ``steps``.

    At step ``s`` (0-based) the learning rate is ``lr * (s + 1) / warmup`` while
    ``s < warmup``, then ``lr * 0.5 * (1 + cos(pi * (s - warmup) / (steps - warmup)))``
    (``lr``: the optimiser's initial one).

    Args:
        optimizer: the optimiser.
        warmup: warm-up steps (at least 1).
        steps: steps in all.
        last_epoch: the index of the last step taken (``-1``: a fresh run).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup: int, steps: int,
                 last_epoch: int = -1) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 step, got {warmup}")
        self.warmup = warmup
        self.steps = steps
        super().__init__(optimizer, last_epoch)

    def _at(self, base: float, step: int) -> float:
        if step < self.warmup:
            return base * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)  # past the last step: 0 (not a division by 0)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span))

    def get_lr(self) -> list[float | torch.Tensor]:
        """The learning rate of each parameter group at step ``last_epoch``."""
        return [self._at(float(base), self.last_epoch) for base in self.base_lrs]
