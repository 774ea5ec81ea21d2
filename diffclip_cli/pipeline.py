"""The few-shot workflow end to end, as library functions (the commands are thin wrappers).

:func:`pretrain_scene` runs stage 1 (masked diffusion on the scene's unlabelled pixels),
:func:`fewshot_scene` stage 2 (k shots per class, language-supervised) and scores the model on
every labelled pixel it did not train on, :func:`evaluate_pixels` scores a model on pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from diffclip_cli import __version__
from diffclip_cli.errors import LabelError
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.names import is_gdal_name
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import Preset
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import (
    ModelBundle,
    build_classifiers,
    build_network,
    bundle_from_classifier,
    bundle_from_network,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts, class_words, read_descriptions
from diffclip_cli.model.rng import derive_seed
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.progress import Progress, counting
from diffclip_cli.report.baseline import SPATIAL_COMPONENTS, Baseline, score_baselines
from diffclip_cli.report.metrics import AccuracyReport
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.shots import Split, draw_split
from diffclip_cli.sampling.unlabelled import sample_unlabelled
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.budget import (
    Plan,
    Recipe,
    StepCosts,
    StepTimer,
    device_text,
    fit_recipe,
    format_seconds,
    scaled_preset,
)
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.distill import (
    DistillConfig,
    DistillProbe,
    add_fast_path,
    probe_distillation,
)
from diffclip_cli.train.finetune import finetune
from diffclip_cli.train.pretrain import checkpoint_fingerprint, pretrain
from diffclip_cli.train.spatial import ContextChoice, choose_context

__all__ = [
    "DEFAULT_PRETRAIN_SAMPLES",
    "FewshotResult",
    "PlanFn",
    "PretrainResult",
    "evaluate_pixels",
    "fewshot_scene",
    "input_identity",
    "plan_fewshot",
    "plan_training",
    "predict_pixels",
    "pretrain_scene",
]

log = logging.getLogger("diffclip")
_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Called once with the :class:`~diffclip_cli.train.budget.Plan`, before any training.
PlanFn = Callable[[Plan], None]



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
        members: every fine-tuned classifier (``finetune.members`` of them; the model's
            probabilities are their mean).
    """

    bundle: ModelBundle
    network: DiffCLIPNet
    stats: SceneStats
    history: list[dict[str, Any]]
    seconds: float
    plan: Plan | None = None


@dataclass
class FewshotResult:
    """What stage 2 produced.

    Attributes:
        bundle: the ``classifier`` model, ready to save.
        classifier: the fine-tuned classifier (an ensemble's first member).
        labels: the labels used (invalid pixels dropped).
        split: training (shots) and test indices into ``labels``.
        report: accuracy on the test pixels (every labelled pixel not trained on), or ``None``
            when there are none or evaluation was not asked for.
        baselines: the classical baselines' accuracy on the same test pixels
            (:func:`~diffclip_cli.report.baseline.score_baselines`: per-pixel, then
            spectral-spatial); empty without a report or when not asked for.
        pretrain_history: stage-1 records (empty with a given pretrained model).
        finetune_history: stage-2 records.
        timings: seconds per stage (``total``: the whole call).
        plan: the schedule planned before training (with a budget or ``on_plan``).
        members: every fine-tuned classifier (``finetune.members`` of them; the model's
            probabilities are their mean).
    """

    bundle: ModelBundle
    classifier: DiffCLIPClassifier
    labels: LabelSet
    split: Split
    report: AccuracyReport | None
    pretrain_history: list[dict[str, Any]] = field(default_factory=list)
    finetune_history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    baselines: list[Baseline] = field(default_factory=list)
    plan: Plan | None = None
    members: list[DiffCLIPClassifier] = field(default_factory=list)


def _inputs(scene: Scene) -> dict[str, Any]:
    return {"hsi": str(scene.hsi_path), "lidar": [str(p) for p in scene.lidar_paths]}


def input_identity(scene: Scene) -> dict[str, Any]:
    """The scene's files as a checkpoint records them: resolved paths and sizes.

    A GDAL dataset name (``/vsizip/...``, ``NETCDF:...``) is recorded verbatim, without a
    size: it is no local path to resolve. (The content is covered by the digest of the windows
    drawn from the files.)
    """
    files: list[dict[str, Any]] = []
    for path in (scene.hsi_path, *scene.lidar_paths):
        if is_gdal_name(path):
            files.append({"path": str(path), "size": None})
            continue
        p = Path(path)
        try:
            size: int | None = p.stat().st_size
        except OSError:
            size = None
        files.append({"path": str(p.resolve()), "size": size})
    return {"files": files}


def _windows(scene: Scene, rows: np.ndarray, cols: np.ndarray, *, window: int,
             stats: SceneStats, labels: np.ndarray | None = None) -> WindowData:
    batch = read_windows(scene, rows, cols, size=window, stats=stats)
    return WindowData(batch, labels)


#: Optimiser steps run per training stage when calibrating: the first
#: :data:`_CALIBRATION_WARMUP` are a warm-up, the others are timed.
_CALIBRATION_STEPS = 6
_CALIBRATION_WARMUP = 2
#: Seconds of faithful inference timed when calibrating (after a warm-up).
_CALIBRATION_INFER_S = 1.5
#: Pixel positions drawn for timing inference (at most).
_CALIBRATION_PIXELS = 4096


#: One thread is chosen when it runs a step in at most this share of the default's time.
_ONE_THREAD_GAIN = 0.8


def _cores_taken(threads: int) -> bool:
    """Whether other jobs leave fewer free cores than torch has threads (1-minute load).

    The timed comparison in :func:`_fastest_threads` sees only the moment it runs; a job that
    starts a second later makes ``threads`` threads wait for each other at every operation
    (30x slower measured on 2 shared cores). The load average counts this process as about
    one runnable task; the rest are other jobs'.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return False
    return max(0.0, load - 1.0) + threads > (os.cpu_count() or threads) + 0.5


def _fastest_threads(run: Callable[[], float], device: torch.device) -> float:
    """Seconds per step of ``run()`` with torch's threads, or with one when that is faster.

    On a CPU shared with other jobs, torch's threads wait for each other at every operation
    and one thread can be several times faster (measured: 10x on a busy 2-core machine). Runs
    ``run`` with the current thread count, then with one thread, and leaves torch at one
    thread when it took at most :data:`_ONE_THREAD_GAIN` of the time, or when other jobs
    already occupy the cores (:func:`_cores_taken`).

    Returns:
        The seconds per step at the thread count left set.
    """
    first = run()
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1:
        return first
    torch.set_num_threads(1)
    single = run()
    if _cores_taken(threads):
        log.info("Other jobs keep this CPU's cores busy; training uses one thread (torch's %d "
                 "would wait for each other at every operation).", threads)
        return single
    if single <= _ONE_THREAD_GAIN * first:
        log.info("One CPU thread ran %.1fx faster than %d here (the CPU is busy); training "
                 "uses one.", first / max(single, 1e-9), threads)
        return single
    torch.set_num_threads(threads)
    return first


def _restores_threads(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Restore torch's thread count when ``fn`` returns (a plan may lower it for the run)."""
    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        threads = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _calibrate(scene: Scene, net: DiffCLIPNet, stats: SceneStats, preset: Preset, *,
               pretrain_stage: bool, train: WindowData | None, prompts: Sequence[str],
               infer: bool, seed: int, device: torch.device, batch_size: int | None
               ) -> tuple[StepCosts, int | None]:
    """Time a few real steps of each stage on copies of the network (the run is unchanged).

    Reads unlabelled windows over the scene (the window-read cost), runs
    :data:`_CALIBRATION_STEPS` pretraining steps on them and whole epochs of fine-tuning on
    the training windows (the first :data:`_CALIBRATION_WARMUP` steps untimed), and the
    faithful classifier on unlabelled pixels for about :data:`_CALIBRATION_INFER_S` seconds
    (the marginal cost per pixel of two calls, so per-call overheads are not counted for
    every pixel).

    Returns:
        The step costs, and the scene's valid pixels when there are fewer than were drawn
        (``None``: at least as many).
    """
    window = preset.model.window
    wanted = max(_CALIBRATION_STEPS * preset.pretrain.batch_size if pretrain_stage else 0, 256)
    drawn = max(wanted, _CALIBRATION_PIXELS if infer else 0)
    rows, cols = sample_unlabelled(scene, drawn, seed=derive_seed(seed, "calibrate"),
                                   warn=False)
    valid = int(rows.size) if rows.size < drawn else None
    pick = np.random.default_rng(derive_seed(seed, "calibrate/pick")).permutation(rows.size)
    rows, cols = rows[pick], cols[pick]  # any prefix is spread over the scene
    tic = time.perf_counter()
    data = _windows(scene, rows[:wanted], cols[:wanted], window=window, stats=stats)
    costs: dict[str, float] = {"window_read": (time.perf_counter() - tic) / max(1, len(data))}
    gen_seed = derive_seed(seed, "calibrate/train")
    choose_threads = True
    if pretrain_stage and len(data):
        def pretrain_steps() -> float:
            timer = StepTimer()
            n = min(len(data), _CALIBRATION_STEPS * preset.pretrain.batch_size)
            pretrain(copy.deepcopy(net), data.subset(np.arange(n)),
                     dataclasses.replace(preset.pretrain, epochs=1), seed=gen_seed,
                     device=device, progress=timer)
            return timer.per_step(skip=_CALIBRATION_WARMUP)

        costs["pretrain_step"] = _fastest_threads(pretrain_steps, device)
        choose_threads = False
    probe: DiffCLIPClassifier | None = None
    if train is not None and len(train) and (infer or preset.finetune.epochs > 0):
        per_epoch = math.ceil(len(train) / preset.finetune.batch_size)
        warm = math.ceil(_CALIBRATION_WARMUP / per_epoch)  # whole epochs, so the mean is
        timed = math.ceil((_CALIBRATION_STEPS - _CALIBRATION_WARMUP) / per_epoch)  # an epoch's

        def finetune_steps() -> float:
            nonlocal probe
            probe = DiffCLIPClassifier(copy.deepcopy(net),
                                       vocabulary=Vocabulary.build(prompts), seed=seed)
            timer = StepTimer()
            finetune(probe, train, prompts,
                     dataclasses.replace(preset.finetune, epochs=warm + timed), seed=gen_seed,
                     device=device, progress=timer)
            return timer.per_step(skip=warm * per_epoch)

        costs["finetune_step"] = (_fastest_threads(finetune_steps, device) if choose_threads
                                  else finetune_steps())
    if infer and probe is not None and rows.size:
        engine = TileEngine(probe, device=device, batch_size=batch_size)

        def seconds(n: int) -> float:
            tic = time.perf_counter()
            engine.predict_pixels(scene, rows[:n], cols[:n], stats=stats)
            return time.perf_counter() - tic

        seconds(min(rows.size, 64))  # warm-up
        small = min(rows.size, 128)
        rate = small / max(seconds(small), 1e-6)
        large = int(min(rows.size, max(2 * small, rate * _CALIBRATION_INFER_S)))
        t_small, t_large = seconds(small), seconds(large)
        if large >= 2 * small and t_large > t_small:
            costs["infer_pixel"] = (t_large - t_small) / (large - small)
        else:
            costs["infer_pixel"] = t_large / large
    return StepCosts(**costs), valid


def plan_training(
    scene: Scene,
    *,
    preset: Preset,
    net: DiffCLIPNet,
    stats: SceneStats,
    pretrain_samples: int,
    train: WindowData | None = None,
    prompts: Sequence[str] = (),
    score_pixels: int = 0,
    distill: DistillConfig | None = None,
    budget: float | None = None,
    pinned: Collection[str] = (),
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    started: float | None = None,
) -> Plan:
    """Calibrate the step costs on this scene, model and device, and size the schedule.

    Args:
        scene: the scene.
        preset: the recipe as asked.
        net: the network to train (only copies of it are touched).
        stats: the normalisation statistics.
        pretrain_samples: unlabelled windows asked for (0: no pretraining stage).
        train: the labelled training windows (``None``: no fine-tuning stage).
        prompts: the class prompts.
        score_pixels: held-out pixels scored at the end.
        distill: the fast path's options (``None``: no fast path).
        budget: seconds for everything; ``None``: the recipe as asked, only estimated.
        pinned: recipe fields (:data:`~diffclip_cli.train.budget.RECIPE_FIELDS`) not to change.
        seed: the run's seed (calibration uses seeds derived from it).
        device: where to time the steps (a :class:`torch.device` or a name, resolved here).
        batch_size: windows per inference pass.
        started: ``time.perf_counter()`` when the run started (set-up counted in the plan).

    Returns:
        The plan (see :func:`~diffclip_cli.train.budget.fit_recipe` for what is cut first).
        On a CPU, torch is left at one thread when one thread ran the timed steps clearly
        faster than torch's default (a busy machine); the plan's device says which.
    """
    tic = time.perf_counter()
    device = resolve_device(device)
    costs, valid = _calibrate(scene, net, stats, preset, pretrain_stage=pretrain_samples > 0,
                              train=train, prompts=prompts,
                              infer=score_pixels > 0 or distill is not None, seed=seed,
                              device=device, batch_size=batch_size)
    probe: DistillProbe | None = None
    if distill is not None and train is not None:
        probe = probe_distillation(scene, window=preset.model.window,
                                   num_classes=len(prompts), config=distill, seed=seed,
                                   device=device, context_bands=stats.context_bands())
        read = probe.read_pixels / preset.model.window ** 2 * costs.window_read
        costs = dataclasses.replace(costs, distill_step=probe.step_s, distill_read=read)
    setup = time.perf_counter() - (tic if started is None else started)
    costs = dataclasses.replace(costs, setup=setup)
    full = Recipe(
        pretrain_windows=max(0, pretrain_samples if valid is None
                             else min(pretrain_samples, valid)),
        pretrain_epochs=preset.pretrain.epochs,
        pretrain_batch=preset.pretrain.batch_size,
        finetune_windows=0 if train is None else len(train),
        finetune_epochs=preset.finetune.epochs if train is not None else 0,
        finetune_batch=preset.finetune.batch_size,
        distill_steps=0 if probe is None else probe.steps,
        distill_pixels=0 if probe is None else probe.pixels,
        score_pixels=max(0, score_pixels),
        members=preset.finetune.members)
    if budget is None:
        recipe, fits = full, True
    else:
        recipe, fits = fit_recipe(full, costs, budget, pinned=pinned)
    plan = Plan(recipe=recipe, full=full, costs=costs, budget_s=budget, fits=fits,
                device=device_text(device, torch.get_num_threads()), pinned=tuple(pinned))
    log.debug("plan %s", plan.to_dict())
    return plan


@_restores_threads
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
    data = _windows(scene, rows, cols, window=preset.model.window, stats=stats)
    history = pretrain(net, data, preset.pretrain, seed=seed, checkpoint=checkpoint,
                       resume=resume, device=device, progress=progress,
                       inputs=input_identity(scene) if checkpoint is not None else None)
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {"inputs": _inputs(scene), "seed": seed,
                              "pretrain_samples": int(rows.size),
                              "pretrain_seconds": round(seconds, 1), "version": __version__}
    if plan is not None:
        record["plan"] = plan.to_dict()
        record["seconds"] = {"total": round(seconds, 1)}
    bundle = bundle_from_network(net.cpu(), preset=preset, stats=stats,
                                 band_names=scene.band_names, wavelengths=scene.wavelengths,
                                 provenance=record)
    return PretrainResult(bundle, net, stats, history, seconds, plan)


def _split(labels: LabelSet, shots: int, *, seed: int, mode: str
           ) -> tuple[LabelSet, Split]:
    """The labels without the classes that got no shot, and the split of ``mode``.

    See :func:`_drop_classes_without_shots`.
    """
    return _drop_classes_without_shots(labels, draw_split(labels, shots, seed=seed, mode=mode))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _drop_classes_without_shots(labels: LabelSet, split: Split) -> tuple[LabelSet, Split]:
    """Leave classes that got no training shot out of the model (with a warning).

    A class with 0 or 1 labelled pixel (or, in a spatial split, lying in one block) gives no
    shot: the network would have nothing but its name to learn it from. It is left out of the
    model, the map and the held-out report; the other classes keep their ids.

    Raises:
        LabelError: fewer than two classes are left.
    """
    counts = np.bincount(labels.index[split.train], minlength=len(labels.classes))
    empty = counts == 0
    if not empty.any():
        return labels, split
    have = labels.counts()
    kept = [c for c, e in zip(labels.classes, empty, strict=True) if not e]
    dropped = [f"'{c.name}' ({_plural(int(n), 'labelled pixel')})"
               for c, n, e in zip(labels.classes, have, empty, strict=True) if e]
    rule = "a class needs at least 2 labelled pixels, one to train on and one to test"
    if not kept:
        raise LabelError(f"no class has enough labelled pixels to train on; {rule}",
                         path=labels.report.source,
                         hint="label more pixels of each class")
    if len(kept) == 1:
        raise LabelError(f"only the class '{kept[0].name}' has enough labelled pixels to train "
                         f"on, and a map needs at least two classes; {rule}",
                         path=labels.report.source,
                         hint=f"label more pixels of {', '.join(dropped)}")
    text = (f"left out of the model, so never mapped: {', '.join(dropped)}, because {rule}; "
            "label more pixels of them to map them")
    log.warning("%s", text)
    keep = ~empty[labels.index]
    new_index = np.cumsum(keep) - 1
    train = new_index[split.train].astype(np.int64)
    test = new_index[split.test[keep[split.test]]].astype(np.int64)
    subset = labels.subset(keep)
    table = ClassTable(kept)
    report = dataclasses.replace(
        labels.report,
        pixels_per_class={c.name: labels.report.pixels_per_class.get(c.name, 0) for c in kept})
    return (dataclasses.replace(subset, classes=table, report=report),
            Split(train, test, [*split.warnings, text]))


def _given_split(split: Split, labels: LabelSet, scene: Scene) -> Split:
    """A split of ``labels`` re-indexed onto ``labels.drop_invalid(scene)``."""
    n = len(labels)
    for part in (split.train, split.test):
        if part.size and (part.min() < 0 or part.max() >= n):
            raise ValueError(f"split indices must lie in 0..{n - 1}")
    if np.intersect1d(split.train, split.test).size:
        raise ValueError("the training and test pixels of a split must be disjoint")
    valid = scene.valid_at(labels.rows, labels.cols)
    new_index = np.cumsum(valid) - 1
    train = np.sort(new_index[split.train[valid[split.train]]]).astype(np.int64)
    test = np.sort(new_index[split.test[valid[split.test]]]).astype(np.int64)
    if train.size == 0:
        raise LabelError("the given split has no valid training pixel",
                         hint="check that the training labels belong to this scene")
    return Split(train, test, list(split.warnings))


def _prompts(classes: ClassTable, template: str,
             descriptions: Mapping[str, str] | str | Path | None, *,
             left_out: Sequence[str] = ()) -> list[str]:
    """The class prompts; descriptions of classes ``left_out`` of the model are ignored."""
    if template == "p5" and descriptions is None:
        if all(c.description for c in classes):
            descriptions = {c.name: c.description for c in classes}
        else:
            missing = [c.name for c in classes if not c.description]
            raise LabelError(f"prompt template p5 needs a description for every class; "
                             f"missing for {missing}",
                             hint="pass --descriptions FILE or a classes table with a "
                                  "description column")
    source = None
    if template == "p5" and left_out and descriptions is not None:
        if isinstance(descriptions, (str, os.PathLike)):
            source = descriptions
            descriptions = read_descriptions(descriptions)
        gone = {class_words(n).casefold() for n in left_out}
        descriptions = {k: v for k, v in descriptions.items()
                        if class_words(k).casefold() not in gone}
    try:
        return build_prompts(classes.names, template=template, descriptions=descriptions)
    except LabelError as exc:
        if source is None or exc.path is not None:
            raise
        raise LabelError(exc.message, path=source, hint=exc.hint) from None


@dataclass
class _Prepared:
    """What fine-tuning needs, ready before any training (see :func:`_prepare`)."""

    labels: LabelSet
    chosen: Split
    given: Split | None
    preset: Preset
    template: str
    prompts: list[str]
    stats: SceneStats
    net: DiffCLIPNet | None
    train: WindowData
    read_seconds: float
    pretrained: bool
    context: ContextChoice | None = None


@dataclass(frozen=True, kw_only=True)
class _Request:
    """What :func:`fewshot_scene` or :func:`plan_fewshot` was asked, built once and passed down.

    It is all that :func:`_prepare` and :func:`_plan_prepared` are given, so a training option
    is threaded through one object, not through each signature. The fields are the arguments
    of the same names (``plan_fewshot`` has no pretrained model, template or descriptions),
    except ``device`` (resolved) and ``distill`` (the fast path's settings from ``fast``;
    ``None``: no fast path).
    """

    shots: int
    preset: Preset
    pretrained: ModelBundle | None = None
    pretrain_samples: int
    template: str | None = None
    descriptions: Mapping[str, str] | str | Path | None = None
    split: str | Split
    seed: int
    device: torch.device
    evaluate: bool
    batch_size: int | None
    distill: DistillConfig | None
    budget: float | None
    pinned: Collection[str]


def _prepare(scene: Scene, labels: LabelSet, request: _Request) -> _Prepared:
    """The split, the prompts, the statistics and the training windows of :func:`fewshot_scene`.

    The network is the pretrained one, or ``None`` (stage 1 builds it).
    """
    split, seed, pretrained = request.split, request.seed, request.pretrained
    preset = request.preset
    given = split if isinstance(split, Split) else None
    if given is not None:
        given = _given_split(given, labels, scene)
    labels = labels.drop_invalid(scene)
    for sentence in labels.report.summary():
        log.info("%s", sentence)
    all_classes = labels.classes.names
    if given is not None:
        chosen = given
    else:
        labels, chosen = _split(labels, request.shots, seed=seed, mode=str(split))
    left_out = [n for n in all_classes if n not in labels.classes.names]
    if pretrained is not None:
        pretrained.check_inputs(scene.hsi_bands, scene.lidar_bands,
                                wavelengths=scene.wavelengths,
                                band_names=scene.band_names["hsi"])
        preset = dataclasses.replace(pretrained.preset_config, finetune=preset.finetune)
    # The prompts first: a bad descriptions file fails before any training.
    template = request.template or preset.model.template
    prompts = _prompts(labels.classes, template, request.descriptions, left_out=left_out)
    net = None
    context: ContextChoice | None = None
    if pretrained is not None:
        net = build_network(pretrained)
        stats = pretrained.scene_stats
    else:
        # The spatial context the network reads is chosen on the shots (train/spatial.py).
        train_px = chosen.train
        context = choose_context(scene, compute_stats(scene, seed=seed), preset.model,
                                 labels.rows[train_px], labels.cols[train_px],
                                 labels.class_ids[train_px])
        stats = context.stats
    tic = time.perf_counter()
    train = _windows(scene, labels.rows[chosen.train], labels.cols[chosen.train],
                     window=preset.model.window, stats=stats,
                     labels=labels.index[chosen.train])
    return _Prepared(labels, chosen, given, preset, template, prompts, stats, net, train,
                     time.perf_counter() - tic, pretrained is not None, context)


def _plan_prepared(scene: Scene, prep: _Prepared, request: _Request, *, started: float
                   ) -> Plan:
    """:func:`plan_training` for a prepared few-shot run."""
    net = prep.net
    if net is None:  # the network stage 1 will build (only copies of it are trained here)
        net = DiffCLIPNet(prep.preset.model, hsi_bands=scene.hsi_bands,
                          lidar_bands=scene.lidar_bands, seed=request.seed,
                          context_bands=prep.stats.context_bands())
    return plan_training(
        scene, preset=prep.preset, net=net, stats=prep.stats,
        pretrain_samples=0 if prep.pretrained else request.pretrain_samples, train=prep.train,
        prompts=prep.prompts,
        score_pixels=int(prep.chosen.test.size) if request.evaluate else 0,
        distill=request.distill, budget=request.budget, pinned=request.pinned,
        seed=request.seed, device=request.device, batch_size=request.batch_size,
        started=started)


def _distill_config(fast: bool | Mapping[str, Any]) -> DistillConfig | None:
    """The fast path's settings from ``fast`` (``False``: no fast path, ``True``: defaults)."""
    if not fast:
        return None
    return DistillConfig.from_dict(dict(fast) if isinstance(fast, Mapping) else {})


def plan_fewshot(
    scene: Scene,
    labels: LabelSet,
    *,
    shots: int,
    preset: Preset,
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES,
    split: str | Split = "random",
    seed: int = 0,
    device: str | torch.device = "cpu",
    evaluate: bool = True,
    fast: bool | Mapping[str, Any] = True,
    budget: float | None = None,
    pinned: Collection[str] = (),
    batch_size: int | None = None,
) -> Plan:
    """The plan :func:`fewshot_scene` would make with these arguments, without training.

    For scripts that fix a schedule once and reuse it (e.g. a benchmark protocol); the
    arguments mean what they mean for :func:`fewshot_scene`. On a busy CPU the calibration may
    leave torch at one thread, where the estimate holds (see :func:`plan_training`).
    """
    begin = time.perf_counter()
    request = _Request(shots=shots, preset=preset, pretrain_samples=pretrain_samples,
                       split=split, seed=seed, device=resolve_device(device),
                       evaluate=evaluate, batch_size=batch_size, distill=_distill_config(fast),
                       budget=budget, pinned=pinned)
    return _plan_prepared(scene, _prepare(scene, labels, request), request, started=begin)


def member_seed(seed: int, member: int) -> int:
    """The seed of an ensemble member's head (member 0 keeps the run's seed)."""
    return seed if member == 0 else derive_seed(seed, f"finetune/member{member}")


def _finetune_members(net: DiffCLIPNet, train: WindowData, prompts: Sequence[str],
                      preset: Preset, *, seed: int, device: torch.device,
                      progress: Progress | None
                      ) -> list[tuple[DiffCLIPClassifier, list[dict[str, Any]]]]:
    """``preset.finetune.members`` classifiers fine-tuned from copies of ``net``."""
    n = preset.finetune.members
    log.info("Fine-tuning %s on %d labelled windows (%d classes).",
             "one classifier" if n == 1 else f"{n} classifiers (averaged)", len(train),
             len(prompts))
    out = []
    for member in range(n):
        start = net if member == n - 1 else copy.deepcopy(net)  # the last takes the original
        s = member_seed(seed, member)
        classifier = DiffCLIPClassifier(start, vocabulary=Vocabulary.build(prompts), seed=s)
        history = finetune(classifier, train, prompts, preset.finetune, seed=s,
                           device=device, progress=progress)
        out.append((classifier, history))
    return out


@_restores_threads
def fewshot_scene(
    scene: Scene,
    labels: LabelSet,
    *,
    shots: int,
    preset: Preset,
    pretrained: ModelBundle | None = None,
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES,
    template: str | None = None,
    descriptions: Mapping[str, str] | str | Path | None = None,
    split: str | Split = "random",
    seed: int = 0,
    device: str | torch.device = "cpu",
    evaluate: bool = True,
    batch_size: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    baseline: bool = True,
    fast: bool | Mapping[str, Any] = False,
    budget: float | None = None,
    pinned: Collection[str] = (),
    on_plan: PlanFn | None = None,
) -> FewshotResult:
    """Stage 2 (and stage 1 unless ``pretrained`` is given): a few-shot classifier of a scene.

    ``shots`` labelled pixels per class are drawn with ``seed``; every other labelled pixel is
    a test pixel, used only to score the final model (never to select it).

    Args:
        scene: the scene.
        labels: labelled pixels (pixels on invalid data are dropped and reported).
        shots: labelled pixels per class to train on.
        preset: architecture and recipes; with ``pretrained``, its fine-tuning recipe is used
            and the architecture is the pretrained model's.
        pretrained: a stage-1 model of a scene with the same bands (its statistics are used).
        pretrain_samples: unlabelled windows for stage 1.
        template: prompt template ``p1``..``p5`` or a text with ``{class}``; default the
            preset's.
        descriptions: class descriptions for ``p5`` (mapping or file); default the classes
            table's description column.
        split: ``"random"`` (the paper's protocol) or ``"spatial"`` (test pixels away from
            the shots), or a given :class:`~diffclip_cli.sampling.shots.Split` of ``labels``
            (e.g. a fixed standard split; ``shots`` is then only recorded). Indices refer to
            ``labels`` as given; pixels on invalid data are dropped from both sides.
        seed: the seed of every random choice.
        device: where to train and score (a :class:`torch.device` or a name, resolved here
            once for every stage).
        evaluate: score the model on the test pixels.
        batch_size: windows per forward pass when scoring.
        provenance: extra facts to record in the model file (input paths, ...).
        progress: called with :class:`~diffclip_cli.progress.ProgressEvent` s of the stages
            ``"pretrain"``, ``"finetune"`` (optimiser steps), with the fast path
            ``"teacher"`` (pixels) and ``"distill"`` (steps), and ``"evaluate"`` (pixels).
        baseline: with the report, also score the classical baselines
            (:func:`~diffclip_cli.report.baseline.score_baselines`) on the same test pixels.
        fast: also distil the fast path (``classify --fast``) into the bundle; a mapping
            gives :class:`~diffclip_cli.train.distill.DistillConfig` options.
        budget: seconds the whole call may take (training, fast path, scoring): the schedule
            is sized to fit from a few timed steps of each stage (:func:`plan_training`);
            ``None``: the recipe as asked.
        pinned: recipe fields to keep as asked under a budget (``"pretrain_windows"``,
            ``"pretrain_epochs"``, ``"finetune_epochs"``, ``"distill_steps"``).
        on_plan: called with the plan before any training; a plan is made (and recorded in
            the provenance with the time taken) when this or ``budget`` is given.

    Returns:
        The classifier, its model file contents, the split, the held-out report and the
        baseline's.
    """
    begin = time.perf_counter()
    timings: dict[str, float] = {}
    request = _Request(shots=shots, preset=preset, pretrained=pretrained,
                       pretrain_samples=pretrain_samples, template=template,
                       descriptions=descriptions, split=split, seed=seed,
                       device=resolve_device(device), evaluate=evaluate, batch_size=batch_size,
                       distill=_distill_config(fast), budget=budget, pinned=pinned)
    device, distill = request.device, request.distill
    prep = _prepare(scene, labels, request)
    labels, chosen, given, preset, template, prompts = (
        prep.labels, prep.chosen, prep.given, prep.preset, prep.template, prep.prompts)
    stats, net, train = prep.stats, prep.net, prep.train
    pre_history: list[dict[str, Any]] = []
    plan = None
    if budget is not None or on_plan is not None:
        plan = _plan_prepared(scene, prep, request, started=begin)
        preset = scaled_preset(preset, plan.recipe)
        if pretrained is None:
            pretrain_samples = plan.recipe.pretrain_windows
        if distill is not None:
            distill = dataclasses.replace(distill, steps=plan.recipe.distill_steps)
        if on_plan is not None:
            on_plan(plan)
    if net is None:  # no pretrained model: stage 1 builds the network
        stage1 = pretrain_scene(scene, preset=preset, samples=pretrain_samples, seed=seed,
                                stats=stats, device=device, progress=progress)
        net, pre_history = stage1.network, stage1.history
        timings["pretrain"] = stage1.seconds

    start = time.perf_counter()
    members = _finetune_members(net, train, prompts, preset, seed=seed, device=device,
                                progress=progress)
    classifier, history = members[0]
    classifiers = [m for m, _ in members]
    timings["finetune"] = time.perf_counter() - start + prep.read_seconds

    counts = np.bincount(labels.index[chosen.train], minlength=len(labels.classes))
    record = {
        "inputs": _inputs(scene),
        "seed": seed,
        "shots": shots,
        "split": "given" if given is not None else split,
        "train_pixels_per_class": {c.name: int(n) for c, n in zip(labels.classes, counts,
                                                                     strict=True)},
        "pretrained": None if pretrained is None else pretrained.provenance,
        "pretrain_samples": None if pretrained is not None else pretrain_samples,
        "context": None if prep.context is None else prep.context.to_dict(),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "version": __version__,
        **dict(provenance or {}),
    }
    if plan is not None:
        record["plan"] = plan.to_dict()
    bundle = bundle_from_classifier([c.cpu() for c in classifiers], preset=preset, stats=stats,
                                    classes=labels.classes, template=template,
                                    band_names=scene.band_names,
                                    wavelengths=scene.wavelengths, provenance=record)
    if distill is not None:
        start = time.perf_counter()
        bundle = add_fast_path(scene, bundle, classifier=classifiers, seed=seed, device=device,
                               batch_size=batch_size, progress=progress,
                               config=distill)
        timings["fast path"] = time.perf_counter() - start
    report = None
    if evaluate and chosen.test.size:
        start = time.perf_counter()
        report = evaluate_pixels(scene, bundle, labels.subset(chosen.test), device=device,
                                 batch_size=batch_size, progress=progress,
                                 classifier=classifiers)
        timings["evaluate"] = time.perf_counter() - start
    bases: list[Baseline] = []
    if report is not None and baseline:
        start = time.perf_counter()
        reuse = (prep.context is not None
                 and preset.model.context_components == SPATIAL_COMPONENTS)
        bases = score_baselines(scene, labels, chosen, stats=stats, seed=seed,
                                projection=prep.context.projection if reuse and prep.context
                                else None)
        timings["baseline"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - begin
    seconds = {k: round(v, 1) for k, v in timings.items()}
    bundle = dataclasses.replace(bundle, provenance={**bundle.provenance, "seconds": seconds})
    if plan is not None:
        log.info("Took %s (estimated %s).", format_seconds(timings["total"]),
                 format_seconds(plan.total_s))
    return FewshotResult(bundle, classifier, labels, chosen, report, pre_history, history,
                         timings, baselines=bases, plan=plan, members=classifiers)


def predict_pixels(
    scene: Scene,
    bundle: ModelBundle,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: Progress | None = None,
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier] | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, K)`` of scattered pixels, reading their windows in chunks.

    Args:
        scene: the scene (its band counts must match the model's).
        bundle: a ``classifier`` model.
        rows: pixel rows.
        cols: pixel columns.
        device: a :class:`torch.device` or a name.
        batch_size: windows per forward pass.
        progress: called with ``"evaluate"`` :class:`~diffclip_cli.progress.ProgressEvent` s
            (pixels).
        classifier: the bundle's classifier (or its ensemble's members) when already built
            (skips rebuilding them).
    """
    bundle.check_inputs(scene.hsi_bands, scene.lidar_bands)
    engine = TileEngine(classifier or build_classifiers(bundle), device=device,
                        batch_size=batch_size)
    return engine.predict_pixels(scene, rows, cols, stats=bundle.scene_stats,
                                 progress=counting(progress, "evaluate"))


def evaluate_pixels(
    scene: Scene,
    bundle: ModelBundle,
    labels: LabelSet,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: Progress | None = None,
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier] | None = None,
) -> AccuracyReport:
    """Score a classifier on labelled pixels (their classes must be the model's classes).

    Returns:
        OA, AA, kappa, per-class accuracies and the confusion matrix.
    """
    classes = bundle.require_classes()
    probs = predict_pixels(scene, bundle, labels.rows, labels.cols, device=device,
                           batch_size=batch_size, progress=progress, classifier=classifier)
    predicted = np.asarray(classes.ids)[probs.argmax(axis=1)]
    return AccuracyReport.from_labels(labels.class_ids, predicted, classes)
