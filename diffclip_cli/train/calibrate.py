"""Calibration: a few real steps of each stage timed on this scene, model and device.

:func:`plan_training` times pretraining and fine-tuning steps on copies of the network and the
faithful classifier on a few hundred pixels, then sizes the schedule with
:func:`~diffclip_cli.train.budget.fit_recipe` (the budget code beside it). On a CPU it also
picks the thread count: torch's default or one thread, when one is clearly faster (a busy
machine); :func:`restores_threads` gives a stage's caller its own setting back.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from typing import ParamSpec, TypeVar

import numpy as np
import torch

from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import Preset
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import derive_seed
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.unlabelled import sample_unlabelled
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.budget import (
    Plan,
    Recipe,
    StepCosts,
    StepTimer,
    device_text,
    fit_recipe,
)
from diffclip_cli.train.data import WindowData, window_data
from diffclip_cli.train.distill import DistillConfig, DistillProbe, probe_distillation
from diffclip_cli.train.finetune import finetune
from diffclip_cli.train.pretrain import pretrain

__all__ = ["plan_training", "restores_threads"]

log = logging.getLogger("diffclip")
_P = ParamSpec("_P")
_R = TypeVar("_R")


#: Optimiser steps run per training stage when calibrating: the first
#: :data:`_CALIBRATION_WARMUP` are a warm-up, the others are timed.
_CALIBRATION_STEPS = 6
_CALIBRATION_WARMUP = 2
#: Seconds of faithful inference timed when calibrating, beyond the first read (after a
#: warm-up).
_CALIBRATION_INFER_S = 1.5
#: Pixels of the first timed inference call (its read is mostly the call's fixed cost).
_CALIBRATION_SMALL = 128
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


def restores_threads(fn: Callable[_P, _R]) -> Callable[_P, _R]:
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
    faithful classifier on unlabelled pixels (:func:`_infer_costs`: a call's fixed cost apart
    from the per-pixel ones).

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
    data = window_data(scene, rows[:wanted], cols[:wanted], window=window, stats=stats)
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
        costs.update(_infer_costs(TileEngine(probe, device=device, batch_size=batch_size),
                                  scene, stats, rows, cols))
    return StepCosts(**costs), valid


def _infer_costs(engine: TileEngine, scene: Scene, stats: SceneStats, rows: np.ndarray,
                 cols: np.ndarray) -> dict[str, float]:
    """Time faithful inference of scattered pixels (``infer_chunk``, ``_read``, ``_pixel``).

    A call reads its pixels' blocks (with spatial context: projecting and smoothing them, a
    second or more on a 200-band scene) whatever the number of pixels, then a window per pixel,
    then runs the network on each. Timing calls of growing size (x 4, from
    :data:`_CALIBRATION_SMALL` pixels, until their reads and forward passes beyond the first
    call's take :data:`_CALIBRATION_INFER_S`) separates the fixed cost from the per-pixel ones;
    one call's total divided by its pixels would charge the fixed cost to every pixel.
    """
    window = engine.window

    def timed(n: int) -> tuple[float, float]:
        tic = time.perf_counter()
        batch = read_windows(scene, rows[:n], cols[:n], size=window, stats=stats)
        mid = time.perf_counter()
        engine.predict_windows(batch.hsi, batch.lidar)
        return mid - tic, time.perf_counter() - mid

    timed(min(rows.size, 64))  # warm-up
    small = min(rows.size, _CALIBRATION_SMALL)
    read_small, forward_small = timed(small)
    large, read_large, forward_large = small, read_small, forward_small
    while large < rows.size:
        large = min(rows.size, 4 * large)
        read_large, forward_large = timed(large)
        if read_large - read_small + forward_large >= _CALIBRATION_INFER_S:
            break
    per_read = max(0.0, read_large - read_small) / (large - small) if large > small else 0.0
    return {"infer_pixel": forward_large / max(1, large), "infer_read": per_read,
            "infer_chunk": max(0.0, read_small - per_read * small)}


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
        members=preset.finetune.members,
        pretrain_encoders=preset.pretrain.encoders)
    if budget is None:
        recipe, fits = full, True
    else:
        recipe, fits = fit_recipe(full, costs, budget, pinned=pinned)
    plan = Plan(recipe=recipe, full=full, costs=costs, budget_s=budget, fits=fits,
                device=device_text(device, torch.get_num_threads()), pinned=tuple(pinned))
    log.debug("plan %s", plan.to_dict())
    return plan
