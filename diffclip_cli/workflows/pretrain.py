"""The pretrain workflow: a scene's own unlabelled pixels to a pretrained model file.

:func:`pretrain_scene` is stage 1 on an open scene (masked diffusion on unlabelled windows
spread over it, sized to a budget when one is given); :func:`run_pretrain` is what
``diffclip pretrain`` runs: the model file (and its checkpoint) checked against the inputs
before any work, stage 1 with a checkpoint after every epoch (resumable), the model saved and
renamed into place, then the checkpoint removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffclip_cli import __version__
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import ModelBundle, bundle_from_networks
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import derive_seed
from diffclip_cli.progress import Progress, ProgressEvent
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

__all__ = ["PretrainOptions", "PretrainResult", "checkpoint_path", "encoder_checkpoint",
           "encoder_seed", "pretrain_scene", "remove_checkpoints", "run_pretrain"]

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
        networks: every encoder (``pretrain.encoders``; the first is ``network``).
    """

    bundle: ModelBundle
    network: DiffCLIPNet
    stats: SceneStats
    history: list[dict[str, Any]]
    seconds: float
    plan: Plan | None = None
    networks: list[DiffCLIPNet] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.networks:
            self.networks = [self.network]


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
    encoders = preset.pretrain.encoders
    nets, history, drawn = [net], [], 0
    for j in range(encoders):
        if j:
            nets.append(DiffCLIPNet(preset.model, hsi_bands=scene.hsi_bands,
                                    lidar_bands=scene.lidar_bands, seed=encoder_seed(seed, j),
                                    context_bands=stats.context_bands()))
        records, drawn = _pretrain_encoder(
            scene, nets[j], j, encoders, preset=preset, samples=samples,
            seed=encoder_seed(seed, j), stats=stats,
            checkpoint=encoder_checkpoint(checkpoint, j), resume=resume, device=device,
            progress=progress)
        history += records
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {"inputs": input_paths(scene), "seed": seed,
                              "pretrain_samples": drawn,
                              "pretrain_seconds": round(seconds, 1), "version": __version__}
    if encoders > 1:
        record["encoders"] = encoders
    if plan is not None:
        record["plan"] = plan.to_dict()
        record["seconds"] = {"total": round(seconds, 1)}
    bundle = bundle_from_networks([n.cpu() for n in nets], preset=preset, stats=stats,
                                  band_names=scene.band_names, wavelengths=scene.wavelengths,
                                  provenance=record)
    return PretrainResult(bundle, net, stats, history, seconds, plan, networks=nets)


def encoder_seed(seed: int, encoder: int) -> int:
    """The seed of stage-1 encoder ``encoder`` (encoder 0 keeps the run's seed)."""
    return seed if encoder == 0 else derive_seed(seed, f"pretrain/encoder{encoder}")


def encoder_checkpoint(checkpoint: str | Path | None, encoder: int) -> Path | None:
    """Encoder ``encoder``'s checkpoint.

    ``checkpoint`` itself for the first, ``model.pt.ckpt.2`` for the second, ...
    """
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path if encoder == 0 else path.with_name(f"{path.name}.{encoder + 1}")


def remove_checkpoints(checkpoint: Path, encoders: int) -> None:
    """Remove the checkpoints of ``encoders`` stage-1 encoders (those that exist)."""
    for j in range(encoders):
        path = encoder_checkpoint(checkpoint, j)
        assert path is not None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _pretrain_encoder(scene: Scene, net: DiffCLIPNet, encoder: int, encoders: int, *,
                      preset: Preset, samples: int, seed: int, stats: SceneStats,
                      checkpoint: Path | None, resume: bool, device: torch.device,
                      progress: Progress | None) -> tuple[list[dict[str, Any]], int]:
    """Stage 1 of one encoder on its own unlabelled windows.

    Returns its records (with the encoder's number when there are several) and the windows
    drawn. Progress counts every encoder's steps.
    """
    rows, cols = sample_unlabelled(scene, samples, seed=seed)
    log.info("Pretraining%s on %d unlabelled windows of %d x %d px.",
             f" encoder {encoder + 1} of {encoders}" if encoders > 1 else "", rows.size,
             preset.model.window, preset.model.window)
    data = window_data(scene, rows, cols, window=preset.model.window, stats=stats)
    report = progress
    if progress is not None and encoders > 1:
        def report(event: ProgressEvent) -> None:
            progress(dataclasses.replace(event, done=encoder * event.total + event.done,
                                         total=encoders * event.total))
    history = run_stage1(net, data, preset.pretrain, seed=seed, checkpoint=checkpoint,
                         resume=resume, device=device, progress=report,
                         inputs=input_identity(scene) if checkpoint is not None else None)
    if encoders > 1:
        history = [{"encoder": encoder + 1, **h} for h in history]
    return history, int(rows.size)


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
    remove_checkpoints(checkpoint, options.preset.pretrain.encoders)
    return result
