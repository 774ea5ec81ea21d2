"""The one progress shape of the library: a :class:`ProgressEvent` handed to a :class:`Progress`.

Every long-running library call takes an optional ``progress`` callable and calls it with one
event per unit of work: per optimiser step in the four trainings (pretraining, fine-tuning, the
linear-head ablation, distillation), per chunk of pixels when the classifier scores pixels.
The command line's progress bars, the time-budget calibration
(:class:`~diffclip_cli.train.budget.StepTimer`) and the benchmark protocol all consume the
same events.

This module imports nothing heavy: the command line imports it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["STAGES", "Progress", "ProgressEvent", "counting"]

#: The stages the library reports, and what their counts count.
STAGES: dict[str, str] = {
    "pretrain": "optimiser steps of stage 1 (masked diffusion)",
    "finetune": "optimiser steps of stage 2 (few-shot fine-tuning, or the linear-head ablation)",
    "teacher": "pixels the classifier labelled for the fast path",
    "distill": "optimiser steps of the fast path's distillation",
    "evaluate": "held-out pixels scored",
    "classify": "pixels of a map classified",
    "suggest": "pixels scored to choose the points to label next",
}


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` units of ``stage`` are finished.

    Attributes:
        stage: one of :data:`STAGES` (callers may add their own).
        done: units finished, counted over the whole run (a resumed pretraining starts at its
            checkpoint's count).
        total: units in the whole run.
        loss: the loss of the optimiser step just taken (training stages), else ``None``.
        record: the history record completed by this step, else ``None``: an epoch's record
            (``epoch``, mean ``loss``, ..., ``lr``, ``seconds``) on the last step of every
            epoch, given after the epoch's checkpoint is written; for distillation the
            periodic record (``step``, ``loss``, ``lr``).
    """

    stage: str
    done: int
    total: int
    loss: float | None = None
    record: Mapping[str, Any] | None = None


class Progress(Protocol):
    """A progress callback: called with every :class:`ProgressEvent`."""

    def __call__(self, event: ProgressEvent, /) -> None:
        """Take note of ``event``; an exception raised here stops the work."""


def counting(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    """A ``(done, total)`` counter reporting ``stage`` to ``progress`` (``None`` for ``None``).

    For the tile engine, whose pixel loops count ``(done, total)``.
    """
    if progress is None:
        return None
    report = progress

    def count(done: int, total: int) -> None:
        report(ProgressEvent(stage, done, total))

    return count
