"""The pretrain workflow: a scene's own unlabelled pixels to a pretrained model file.

:func:`pretrain_scene` is stage 1 on an open scene (masked diffusion on unlabelled windows
spread over it, sized to a budget when one is given); :func:`run_pretrain` is what
``diffclip pretrain`` runs: the model file (and its checkpoint) checked against the inputs
before any work, stage 1 with a checkpoint after every epoch (resumable), the model saved and
renamed into place, then the checkpoint removed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffclip_cli import __version__
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import ModelBundle, bundle_from_network
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.progress import Progress
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.unlabelled import sample_unlabelled
from diffclip_cli.train.budget import Plan, PlanFn, scaled_preset
from diffclip_cli.train.calibrate import plan_training, restores_threads
from diffclip_cli.train.data import window_data
from diffclip_cli.train.pretrain import checkpoint_fingerprint, input_identity, input_paths
from diffclip_cli.train.pretrain import pretrain as run_stage1
from diffclip_cli.workflows.common import TrainingOptions, open_scene

if TYPE_CHECKING:

    from diffclip_cli.model.config import Preset

__all__ = ["PretrainOptions", "PretrainResult", "checkpoint_path", "pretrain_scene",
           "run_pretrain"]

log = logging.getLogger("diffclip")


@dataclass
class PretrainResult:
    """What stage 1 produced.

    Attributes:
        bundle: the ``pretrained`` model (network, statistics, band names, provenance).
        network: the trained image side.
        stats: the normalisation statistics.
        history: one record per epoch.
        seconds: wall time of the stage.
        plan: the schedule planned before training (with a budget or ``on_plan``).
    """

    bundle: ModelBundle
    network: DiffCLIPNet
    stats: SceneStats
    history: list[dict[str, Any]]
    seconds: float
    plan: Plan | None = None


@restores_threads
def pretrain_scene(
    scene: Scene,
    *,
    preset: Preset,
    samples: int = DEFAULT_PRETRAIN_SAMPLES,
    seed: int = 0,
    stats: SceneStats | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    budget: float | None = None,
    pinned: Collection[str] = (),
    on_plan: PlanFn | None = None,
) -> PretrainResult:
    """Stage 1: masked-diffusion pretraining on unlabelled windows spread over the scene.

    Args:
        scene: the scene.
        preset: architecture and pretraining recipe.
        samples: unlabelled windows drawn over the whole valid area.
        seed: drives the statistics sample, the pixel sample, initialisation, masks, noise.
        stats: normalisation statistics; computed from the scene when ``None``.
        checkpoint: a file written after every epoch (see ``resume``).
        resume: continue from ``checkpoint``; ends where an uninterrupted run ends.
        device: where to train (a :class:`torch.device` or a name, resolved here).
        progress: called with a ``"pretrain"`` :class:`~diffclip_cli.progress.ProgressEvent`
            after every optimiser step.
        budget: seconds the stage may take: windows and epochs are sized to fit from a few
            timed steps (:func:`plan_training`); ``None``: as asked.
        pinned: ``"pretrain_windows"`` and/or ``"pretrain_epochs"``: keep those as asked.
        on_plan: called with the plan before training; a plan is made (and recorded in the
            provenance) when this or ``budget`` is given.

    Returns:
        The pretrained model and its history.
    """
    start = time.perf_counter()
    device = resolve_device(device)
    stats = stats or compute_stats(scene, seed=seed)
    net = DiffCLIPNet(preset.model, hsi_bands=scene.hsi_bands, lidar_bands=scene.lidar_bands,
                      seed=seed, context_bands=stats.context_bands())
    plan = None
    resumed = checkpoint_fingerprint(checkpoint) if resume and checkpoint else None
    if resumed is not None and (budget is not None or on_plan is not None):
        # A resumed run keeps the schedule it was planned with (pinned values are checked).
        if "pretrain_windows" not in pinned:
            samples = int(resumed["samples"])
        if "pretrain_epochs" not in pinned:
            preset = preset.with_overrides(**{"pretrain.epochs": resumed["pretrain"]["epochs"]})
    elif budget is not None or on_plan is not None:
        plan = plan_training(scene, preset=preset, net=net, stats=stats,
                             pretrain_samples=samples, budget=budget, pinned=pinned, seed=seed,
                             device=device, started=start)
        samples = plan.recipe.pretrain_windows
        preset = scaled_preset(preset, plan.recipe)
        if on_plan is not None:
            on_plan(plan)
    rows, cols = sample_unlabelled(scene, samples, seed=seed)
    log.info("Pretraining on %d unlabelled windows of %d x %d px.", rows.size,
             preset.model.window, preset.model.window)
    data = window_data(scene, rows, cols, window=preset.model.window, stats=stats)
    history = run_stage1(net, data, preset.pretrain, seed=seed, checkpoint=checkpoint,
                       resume=resume, device=device, progress=progress,
                       inputs=input_identity(scene) if checkpoint is not None else None)
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {"inputs": input_paths(scene), "seed": seed,
                              "pretrain_samples": int(rows.size),
                              "pretrain_seconds": round(seconds, 1), "version": __version__}
    if plan is not None:
        record["plan"] = plan.to_dict()
        record["seconds"] = {"total": round(seconds, 1)}
    bundle = bundle_from_network(net.cpu(), preset=preset, stats=stats,
                                 band_names=scene.band_names, wavelengths=scene.wavelengths,
                                 provenance=record)
    return PretrainResult(bundle, net, stats, history, seconds, plan)


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
    from diffclip_cli.model.archive import save_model
    from diffclip_cli.model.device import resolve_device

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
