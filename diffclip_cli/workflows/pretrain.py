"""The pretrain workflow: a scene's own unlabelled pixels to a pretrained model file.

What ``diffclip pretrain`` runs: the model file (and its checkpoint) checked against the inputs
before any work, stage 1 with a checkpoint after every epoch (resumable), the model saved and
renamed into place, then the checkpoint removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diffclip_cli.pipeline import PlanFn, PretrainResult, pretrain_scene
from diffclip_cli.progress import Progress
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.workflows.common import TrainingOptions, open_scene

if TYPE_CHECKING:

    from diffclip_cli.model.config import Preset

__all__ = ["PretrainOptions", "checkpoint_path", "run_pretrain"]


@dataclass(frozen=True, kw_only=True)
class PretrainOptions(TrainingOptions):
    """What to pretrain and how: the recipe, the sample, resuming and the execution.

    Attributes:
        preset: the recipe, overrides applied.
        samples: unlabelled windows drawn over the scene (``None``: the default,
            :data:`~diffclip_cli.sampling.defaults.DEFAULT_PRETRAIN_SAMPLES`).
        resume: continue an interrupted run from its checkpoint (:func:`checkpoint_path`).

    With the :class:`~diffclip_cli.workflows.common.TrainingOptions` fields (seed, device,
    budget, pinned: here ``pretrain_windows``/``pretrain_epochs``, overwrite).

    Raises:
        ValueError: ``samples`` below 1 or a budget that is not positive.
    """

    preset: Preset
    samples: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"samples must be at least 1, not {self.samples}")


def checkpoint_path(output: Path) -> Path:
    """``model.pt`` -> ``model.pt.ckpt``: the checkpoint written after every epoch."""
    return output.with_name(output.name + ".ckpt")


def run_pretrain(hsi: str | Path, lidar: Sequence[str | Path] | None, output: Path, *,
                 options: PretrainOptions, progress: Progress | None = None,
                 on_plan: PlanFn | None = None) -> PretrainResult:
    """Pretrain a model on a scene's unlabelled pixels and save it.

    The checkpoint (:func:`checkpoint_path`) is rewritten after every epoch and kept when the
    run stops, so ``resume`` continues it; it is removed once the model file is in place.

    Args:
        hsi: the hyperspectral raster (path or GDAL dataset name).
        lidar: LiDAR rasters stacked as channels, or ``None``.
        output: the pretrained model file.
        options: the recipe and the execution.
        progress: called with every training event.
        on_plan: called with the schedule before training (a plan is made when this or a
            budget is given).

    Returns:
        What stage 1 produced (model, history, seconds, plan).

    Raises:
        DeviceError: the device is unknown or not available here.
        DiffclipError: an input cannot be used, an output would replace an input, a
            checkpoint does not fit the run, ...
    """
    from diffclip_cli.io.atomic import check_collisions, output_set
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import save_model

    checkpoint = checkpoint_path(output)
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar}
    # The checkpoint is rewritten every epoch (and resumed from), so it is not in the set.
    check_collisions({"model": output, "checkpoint": checkpoint}, inputs=inputs)
    device = resolve_device(options.device)
    samples = DEFAULT_PRETRAIN_SAMPLES if options.samples is None else options.samples
    with output_set({"model": output}, inputs=inputs, overwrite=options.overwrite), \
            open_scene(hsi, lidar) as scene:
        result = pretrain_scene(
            scene, preset=options.preset, samples=samples, seed=options.seed,
            checkpoint=checkpoint, resume=options.resume, device=device, progress=progress,
            budget=options.budget, pinned=options.pinned, on_plan=on_plan)
        save_model(result.bundle, output, overwrite=options.overwrite)
    with contextlib.suppress(FileNotFoundError):
        checkpoint.unlink()
    return result
