"""Plumbing the commands share: logging, progress bars, interruption, the --preset option.

The library (torch, rasterio, geopandas, matplotlib) is imported inside the functions that
need it, never at module level: ``diffclip --help`` and ``--version`` import none of it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from diffclip_cli.cli.console import err_console, setup_logging
from diffclip_cli.cli.options import verbosity
from diffclip_cli.progress import ProgressEvent

if TYPE_CHECKING:
    from diffclip_cli.model.config import Preset

__all__ = ["StageProgress", "interruptible", "preset_option", "start"]

log = logging.getLogger("diffclip")

_STAGE_TITLES = {
    "pretrain": "Pretraining (steps)",
    "finetune": "Fine-tuning (steps)",
    "evaluate": "Scoring held-out pixels",
    "classify": "Classifying pixels",
    "teacher": "Fast path: teacher labels",
    "distill": "Fast path: distilling (steps)",
    "suggest": "Scoring pixels to suggest",
}


def start(verbose: bool, quiet: bool) -> int:
    """Set up logging for a command from ``-v``/``-q``; returns the verbosity level."""
    level = verbosity(verbose, quiet)
    setup_logging(level)
    if level <= 0:  # libtiff's own stderr lines only with -v (io/gdal.py)
        from diffclip_cli.io.gdal import quiet_libtiff

        quiet_libtiff()
    return level


class StageProgress:
    """Progress of each stage on stderr (count, rate, ETA); silent with ``-q``.

    On a terminal, Rich progress bars, started at the first update (so an error before any
    progress prints nothing but the error). Otherwise (stderr redirected to a log file, a
    batch system) one plain line at the first update of a stage, at every further 10 % and at
    the end, so logs show progress without bar redraws.

    Use as a context manager and pass the instance (a
    :class:`~diffclip_cli.progress.Progress`) as the library's progress callback.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
            disable=not enabled,
        )
        self._started = False
        self._tasks: dict[str, TaskID] = {}
        self._plain: dict[str, tuple[int, float]] = {}

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._started = False
            self._progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: ProgressEvent, /) -> None:
        """Advance (or create) the bar of the event's stage to ``done`` of ``total``."""
        self._update(event.stage, event.done, event.total)

    def _update(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if not err_console.is_terminal:
            self._line(stage, done, total)
            return
        if not self._started:
            self._progress.start()
            self._started = True
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(
                _STAGE_TITLES.get(stage, stage), total=total, rate="")
        task = self._tasks[stage]
        self._progress.update(task, completed=done, total=total)
        speed = self._progress.tasks[self._tasks[stage]].speed
        if speed:
            unit = "px/s" if stage in ("classify", "evaluate", "teacher") else "it/s"
            self._progress.update(task, rate=f"{speed:,.1f} {unit}")

    def _line(self, stage: str, done: int, total: int) -> None:
        """One plain line per 10 % step of a stage (and its first update)."""
        step = 10 * done // total if total > 0 else 10
        now = time.monotonic()
        last = self._plain.get(stage)
        if last is not None and step <= last[0]:
            return
        began = now if last is None else last[1]
        self._plain[stage] = (step, began)
        share = f" ({100 * done / total:.0f} %)" if total > 0 else ""
        left = ""
        if 0 < done < total and now > began:  # the rate so far, from the stage's first update
            from diffclip_cli.train.budget import format_seconds

            left = f", about {format_seconds((now - began) * (total - done) / done)} left"
        err_console.print(f"{_STAGE_TITLES.get(stage, stage)}: {done:,} of {total:,}{share}, "
                          f"{now - began:.0f} s{left}", highlight=False, soft_wrap=True)


def _raise_interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt inside the block, so partial outputs are removed.

    (Ctrl-C already raises KeyboardInterrupt; outputs are written under temporary names and
    the writers delete them on any exception.)
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (e.g. inside a test runner's thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def preset_option(name: str) -> Preset:
    """The preset ``--preset`` names; an unknown name is a usage error naming the option.

    (A preset YAML file that cannot be used stays a :class:`~diffclip_cli.errors.ModelError`
    naming the file.)

    Raises:
        typer.BadParameter: ``name`` is neither a shipped preset nor an existing file.
    """
    from diffclip_cli.model.config import list_presets, load_preset

    if name not in list_presets() and not Path(name).exists():
        raise typer.BadParameter(f"unknown preset {name!r}: use one of "
                                 f"{', '.join(list_presets())} or a preset .yaml file",
                                 param_hint="--preset")
    return load_preset(name)
